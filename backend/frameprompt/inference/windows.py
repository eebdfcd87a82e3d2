"""Long animations: any number of frames, generated window by window.

One FramePrompt window is `[reference | N skeleton frames | N target frames]`; the paper's N is 40,
and the sequence (hence memory and time) grows with N. A longer animation of M frames is split
into windows that each keep the reference and continue the previous one:

    window k:  pixel frames [ reference | poses s..s+N-1 | carried (C) + new (N-C) ]
               mask         [    1      |       1        |   1 ... 1   0 ... 0    ]

- Target position j of a window is global frame s + j, and skeleton frame j is that frame's pose,
  so the pose <-> target alignment the model was trained on is unchanged.
- The first C = `overlap` target frames are the last C frames already generated (the previous
  window's output, in pixels, float, not re-quantised). They are *given* frames: mask 1, their
  pixels in the condition video, their VAE latents put in clean at every step, as the reference
  and skeleton are. C is a multiple of `SequenceLayout.frame_multiple(T)` (4 for Wan2.1), so the
  carried frames fill whole latent frames and encoder chunks: no latent is half given, half
  generated.
- The given frames `[reference | skeleton | carried]` stay one contiguous prefix, so the carried
  frames simply extend the context (`SequenceLayout(carried_frames=C)`): everything downstream
  (mask, selective noise, per-token timestep 0, block-causal attention and the K/V cache, decoding)
  follows from the layout. In cache mode the carried frames are cached with the rest of the context.
- Carrying pixels rather than the previous window's latents: the Wan VAE is causal, so the same
  frames get other latents after other frames; re-encoding them in this window's sequence is what
  a given frame is everywhere else in FramePrompt (and in Wan's I2V masking).
- Stitching keeps, from each window, only its N - C new frames; the carried positions come from
  the window that generated them. Every frame 0..M-1 is generated exactly once.
- The last window is shortened to the smallest multiple of T that holds C + the remaining frames;
  if M (or the remainder) is not a multiple of T, the last pose is repeated for the few padding
  frames and their output is dropped. So any M >= 1 works; M <= N is one window.

Cost: ceil((M - C) / (N - C)) windows, each a full generation; a larger overlap gives more
continuity and more windows.

The window is also bounded by the transformer's rotary table: diffusers' `WanRotaryPosEmbed` has
`rope_max_seq_len` rows for the frame axis and slices them by the latent frames after the patch,
(1 + 2N/T) // patch_t, carried frames included (they are part of the N target frames). A window
whose sequence is longer would crash, so `fit_window_frames` gives the largest valid N that fits
(the embedded model, T=1 and 64 rows: N=28, 57 latent frames; Wan2.1, T=4 and 1024 rows: far above
the paper's 40), and `generate_windows` never runs a longer window.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image

from frameprompt.errors import LayoutError
from frameprompt.method import SequenceLayout

if TYPE_CHECKING:  # for annotations only: the pipeline imports this module
    from frameprompt.inference.pipeline import FramePromptPipeline

log = logging.getLogger("frameprompt.inference")

# diffusers' WanTransformer3DModel default when a config says nothing
DEFAULT_ROPE_MAX_SEQ_LEN = 1024


def fit_window_frames(vae: Any, transformer: Any, window_frames: int) -> int:
    """The largest window N <= `window_frames` that is a multiple of the frame multiple
    (`SequenceLayout.multiples_for`) and whose latent frames after the patch, (1 + 2N/T) // patch_t,
    fit the rotary table's `rope_max_seq_len` frame rows. At least one frame multiple (a table too
    small even for that cannot run any window)."""
    multiple, _ = SequenceLayout.multiples_for(vae, transformer)
    t = int(vae.config.scale_factor_temporal)
    p_t = int(transformer.config.patch_size[0])
    rope = int(getattr(transformer.config, "rope_max_seq_len", 0) or DEFAULT_ROPE_MAX_SEQ_LEN)
    n = int(window_frames) // multiple * multiple
    while n > multiple and (1 + 2 * n // t) // p_t > rope:
        n -= multiple
    return max(multiple, n)


def fit_overlap_frames(window_frames: int, overlap_frames: int, frame_multiple: int) -> int:
    """`overlap_frames` kept below the window: at most window - frame_multiple (0 for a one-multiple window)."""
    return max(0, min(int(overlap_frames), window_frames - frame_multiple))


@dataclass(frozen=True)
class Window:
    """One window: target position j is global frame `start + j`.

    start: global index of its first target frame (the first carried frame, if any).
    num_frames: N of its layout (a multiple of T); poses past the animation's end are padding.
    carried: how many leading target frames are given (the previous windows' output).
    new_frames: how many frames it adds to the animation (from position `carried` on).
    """

    index: int
    start: int
    num_frames: int
    carried: int
    new_frames: int

    @property
    def new_slice(self) -> slice:
        """Its new frames, as positions inside the window."""
        return slice(self.carried, self.carried + self.new_frames)

    @property
    def global_new(self) -> range:
        """Its new frames, as global frame indices."""
        return range(self.start + self.carried, self.start + self.carried + self.new_frames)


def plan_windows(
    total_frames: int, window_frames: int = 40, overlap_frames: int = 8, frame_multiple: int = 4
) -> list[Window]:
    """Split `total_frames` into windows of at most `window_frames`, overlapping by `overlap_frames`.

    window_frames and overlap_frames must be multiples of `frame_multiple`
    (`SequenceLayout.frame_multiple(T)`, 4 for Wan2.1), with 0 <= overlap < window. The windows' new
    frames cover 0..total-1 once each, in order. `fit_window_frames` gives the longest window a model
    takes.
    `fit_window_frames` gives the longest window a model takes.
    """
    t = frame_multiple
    if total_frames < 1:
        raise LayoutError(f"{total_frames} frames requested", "ask for at least one frame")
    if window_frames < t or window_frames % t:
        raise LayoutError(
            f"window of {window_frames} frames is not a positive multiple of {t}",
            f"use a window of {max(t, t * round(window_frames / t))} frames",
        )
    if overlap_frames < 0 or overlap_frames % t or overlap_frames >= window_frames:
        raise LayoutError(
            f"overlap of {overlap_frames} frames: must be a multiple of {t} below the window ({window_frames})",
            f"use an overlap of {min(window_frames - t, t * max(0, round(overlap_frames / t)))} frames",
        )
    windows: list[Window] = []
    done = 0
    while done < total_frames:
        carried = overlap_frames if windows else 0
        carried = min(carried, done)
        remaining = total_frames - done
        size = min(window_frames, t * math.ceil((carried + remaining) / t))
        windows.append(Window(len(windows), done - carried, size, carried, min(size - carried, remaining)))
        done += windows[-1].new_frames
    return windows


def window_poses(pose_frames: list, window: Window) -> list:
    """The window's N skeleton frames; positions past the end repeat the last pose (padding)."""
    last = len(pose_frames) - 1
    return [pose_frames[min(window.start + j, last)] for j in range(window.num_frames)]


def generate_windows(
    pipe: FramePromptPipeline,
    reference_image: PIL.Image.Image | np.ndarray,
    pose_frames: list[PIL.Image.Image] | list[np.ndarray],
    window_frames: int = 40,
    overlap_frames: int = 8,
    **kwargs: Any,
) -> tuple[np.ndarray, bool]:
    """Exactly len(pose_frames) frames, window by window (`FramePromptPipeline.generate_long`).

    kwargs go to every window's `pipe(...)` call (prompt, steps, guidance, generator, context_cache,
    ...). Returns the video, (1, M, H, W, 3) float in [0, 1], and whether any window was approximate.
    """
    for name in ("given_frames", "return_dict", "output_type"):
        if name in kwargs:
            raise TypeError(f"generate_long sets {name} itself")
    multiple, _ = SequenceLayout.multiples_for(pipe.vae, pipe.transformer)
    fit = fit_window_frames(pipe.vae, pipe.transformer, window_frames)
    if window_frames > fit:  # a longer window's sequence would not fit the rotary table
        overlap = fit_overlap_frames(fit, overlap_frames, multiple)
        log.info(
            "window of %d frames is longer than the model's position table takes; using %d (overlap %d)",
            window_frames, fit, overlap,
        )  # fmt: skip
        window_frames, overlap_frames = fit, overlap
    plan = plan_windows(len(pose_frames), window_frames, overlap_frames, multiple)
    frames: list[np.ndarray] = []  # global frames generated so far, (H, W, 3) float in [0, 1]
    approximate = False
    for window in plan:
        assert window.start + window.carried == len(frames)
        given = frames[window.start : window.start + window.carried]
        out = pipe(
            reference_image,
            window_poses(pose_frames, window),
            given_frames=given or None,
            output_type="np",
            **kwargs,
        )
        frames.extend(out.frames[0][window.new_slice])
        approximate = approximate or out.approximate
    return np.stack(frames)[None], approximate
