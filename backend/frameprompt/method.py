"""FramePrompt, Section 3 of the paper, in one module.

One visual sequence, one mask, noise and loss on the target only; the Wan2.1 I2V transformer is
used as it is.

    pixel frames   [ reference (1) | skeleton (N) | target (N) ]          F  = 1 + 2N
    latent frames  [ 0 | 1 .. N/T | N/T+1 .. 2N/T ]                       L  = 1 + 2N/T
    context        reference + skeleton latents                           Lc = 1 + N/T

T and S are the VAE's temporal and spatial compression factors (Wan2.1: T=4, S=8, so N % 4 == 0,
L = 1 + N/2, Lc = 1 + N/4). Everything below is derived from them; nothing assumes 4 or 8.

Section 3.3 (sequence + mask):  `SequenceLayout`, `build_context_mask`, `condition_pixels`.
Section 3.3 (training loss):    `sample_sigmas`, `noise_target`, `timestep_for`, `frameprompt_loss`.
Inference:                      `model_input`, `join_sequence` (the pipeline's loop).
The pretrained I2V model it starts from: `SequenceLayout(with_skeleton=False)` is plain
image-to-video, `[reference | N frames]`, and `drop_skeleton` turns a FramePrompt sequence into it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from frameprompt.errors import LayoutError

LossMode = Literal["target", "all"]
WAN_ENCODER_CHUNK = 4


@dataclass(frozen=True)
class SequenceLayout:
    """Frame, latent and token counts of one `[reference | skeleton | target]` sequence.

    Args:
        num_frames: N, the number of skeleton frames, which is also the number of generated frames.
        height, width: pixel size of every frame.
        temporal_factor, spatial_factor: the VAE's compression (`scale_factor_temporal/spatial`).
        patch_size: the transformer's `(t, h, w)` patch size.
        carried_frames: the first `carried_frames` target frames are given, not generated (a window
            continuing the previous one, see `frameprompt.inference.windows`): they join the context, so the
            given frames stay one contiguous prefix `[reference | skeleton | carried]`. A multiple of
            T below N; 0 (the paper's layout) by default.
        with_skeleton: False gives plain image-to-video, `[reference | N target]`: the pretraining
            task of the I2V model FramePrompt starts from (Stage 1 of `frameprompt finetune`).
    """

    num_frames: int
    height: int
    width: int
    temporal_factor: int = 4
    spatial_factor: int = 8
    patch_size: tuple[int, int, int] = (1, 2, 2)
    carried_frames: int = 0
    with_skeleton: bool = True

    def __post_init__(self) -> None:
        # diffusers' AutoencoderKLWan encodes frame 0, then chunks of 4 frames, whatever its temporal
        # compression: the given frames (1 + N) only encode whole when N is a multiple of 4 too.
        n, t = self.num_frames, self.frame_multiple(self.temporal_factor)
        if n < t or n % t:
            nearest = max(t, t * round(n / t))
            raise LayoutError(
                f"N={n} skeleton frames does not fit the VAE ({self.temporal_factor}x temporal "
                f"compression, {WAN_ENCODER_CHUNK}-frame encoder chunks): N must be a positive multiple of {t}",
                f"use N={nearest} (the nearest valid value)",
            )
        multiple = self.spatial_factor * self.patch_size[1]
        for name, size in (("height", self.height), ("width", self.width)):
            if size <= 0 or size % multiple:
                nearest = max(multiple, round(size / multiple) * multiple)
                raise LayoutError(
                    f"{name} {size} is not a multiple of {multiple} (VAE {self.spatial_factor}x "
                    f"times patch {self.patch_size[1]})",
                    f"use {name}={nearest}",
                )
        c = self.carried_frames
        if c < 0 or c >= n or c % t:
            raise LayoutError(
                f"{c} carried frames: must be a multiple of {t} (whole latent frames) below N={n}",
                f"use an overlap that is a multiple of {t} and smaller than the window",
            )

    @staticmethod
    def frame_multiple(temporal_factor: int) -> int:
        """N and carried frames must be multiples of this: lcm(T, the encoder's 4-frame chunks)."""
        return math.lcm(temporal_factor, WAN_ENCODER_CHUNK)

    @staticmethod
    def multiples_for(vae, transformer) -> tuple[int, int]:
        """(frames, pixels) of a diffusers VAE + transformer pair: N must be a multiple of `frames`,
        H and W of `pixels` (the VAE's spatial factor times the patch)."""
        frames = SequenceLayout.frame_multiple(int(vae.config.scale_factor_temporal))
        return frames, int(vae.config.scale_factor_spatial) * int(transformer.config.patch_size[1])

    @classmethod
    def for_models(
        cls, num_frames: int, height: int, width: int, vae, transformer, carried_frames: int = 0
    ) -> SequenceLayout:
        """The layout of a diffusers `AutoencoderKLWan` + `WanTransformer3DModel` pair."""
        return cls(
            num_frames,
            height,
            width,
            temporal_factor=int(vae.config.scale_factor_temporal),
            spatial_factor=int(vae.config.scale_factor_spatial),
            patch_size=tuple(transformer.config.patch_size),
            carried_frames=carried_frames,
        )

    @property
    def skeleton_frames(self) -> int:
        """N, or 0 for plain image-to-video."""
        return self.num_frames if self.with_skeleton else 0

    @property
    def pixel_frames(self) -> int:
        """F = 1 + 2N."""
        return 1 + self.skeleton_frames + self.num_frames

    @property
    def latent_frames(self) -> int:
        """L = 1 + 2N/T (the Wan VAE encodes frame 0 alone, then chunks of T)."""
        return 1 + (self.skeleton_frames + self.num_frames) // self.temporal_factor

    @property
    def context_latent_frames(self) -> int:
        """Lc = 1 + N/T: reference + skeleton latents (+ carried/T when continuing a window)."""
        return 1 + (self.skeleton_frames + self.carried_frames) // self.temporal_factor

    @property
    def target_latent_frames(self) -> int:
        return self.latent_frames - self.context_latent_frames

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // self.spatial_factor, self.width // self.spatial_factor

    @property
    def tokens_per_latent_frame(self) -> int:
        h, w = self.latent_size
        return (h // self.patch_size[1]) * (w // self.patch_size[2])

    @property
    def context_tokens(self) -> int:
        """The transformer's tokens are frame-major, so the first `context_tokens` are context."""
        return self.context_latent_frames // self.patch_size[0] * self.tokens_per_latent_frame

    @property
    def sequence_tokens(self) -> int:
        return self.latent_frames // self.patch_size[0] * self.tokens_per_latent_frame

    @property
    def target_pixel_slice(self) -> slice:
        """Where the N target frames (carried ones included) sit among the F decoded pixel frames."""
        return slice(1 + self.skeleton_frames, self.pixel_frames)

    def without_skeleton(self) -> SequenceLayout:
        """The plain image-to-video layout of the same reference and targets."""
        return dataclasses.replace(self, with_skeleton=False)


def build_context_mask(
    layout: SequenceLayout, batch_size: int = 1, device=None, dtype=torch.float32
) -> torch.Tensor:
    """The binary mask M: 1 on given frames (reference + skeleton + carried), 0 on target frames.

    Wan's I2V "first-frame trick": the pixel-frame mask is taken to latent resolution by repeating
    frame 0 T times and folding each group of T pixel frames into T channels, so channel c of latent
    frame t >= 1 flags pixel frame T(t-1)+1+c.

    Returns: (B, T, L, h, w).
    """
    t = layout.temporal_factor
    h, w = layout.latent_size
    given = torch.zeros(layout.pixel_frames, device=device, dtype=dtype)
    given[: 1 + layout.skeleton_frames + layout.carried_frames] = 1
    per_frame = torch.cat([given[:1].repeat(t), given[1:]])  # (T * L,)
    mask = per_frame.view(layout.latent_frames, t).transpose(0, 1)  # (T, L)
    return mask[None, :, :, None, None].expand(batch_size, t, layout.latent_frames, h, w).contiguous()


def condition_pixels(
    reference: torch.Tensor, skeleton: torch.Tensor, carried: torch.Tensor | None = None
) -> torch.Tensor:
    """The condition video of the I2V convention: given frames, then zero pixels for the target.

    Args: reference (B, 3, 1, H, W), skeleton (B, 3, N, H, W) and optionally the carried frames
        (B, 3, C, H, W) that open the target, all in [-1, 1].
    Returns: (B, 3, 1 + 2N, H, W); encoding it gives the condition latents.
    """
    unknown = skeleton.shape[2] - (0 if carried is None else carried.shape[2])
    zeros = torch.zeros_like(skeleton[:, :, :unknown])
    return torch.cat([context_pixels(reference, skeleton, carried), zeros], dim=2)


def context_pixels(
    reference: torch.Tensor, skeleton: torch.Tensor, carried: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, 3, 1 + N + C, H, W): the given frames. The Wan VAE is causal, so their latents are exactly
    the first Lc latents of the whole sequence."""
    parts = [reference, skeleton] if carried is None else [reference, skeleton, carried]
    return torch.cat(parts, dim=2)


def drop_skeleton(latents: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """(B, C, L, h, w) of a FramePrompt sequence -> (B, C, 1 + N/T, h, w) of `[reference | target]`.

    Exact for a codec without temporal compression (each frame its own latent, as the embedded
    model's); with Wan2.1's causal VAE the target latents keep what they saw of the skeleton.
    """
    skeleton = layout.skeleton_frames // layout.temporal_factor
    return torch.cat([latents[:, :, :1], latents[:, :, 1 + skeleton :]], dim=2)


def latent_zero_condition(context_latents: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """Condition latents with zeros in latent space for the target (the alternative to zero pixels)."""
    b, c, _, h, w = context_latents.shape
    zeros = context_latents.new_zeros(b, c, layout.target_latent_frames, h, w)
    return torch.cat([context_latents, zeros], dim=2)


def sample_sigmas(
    batch_size: int, shift: float = 3.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flow-matching noise levels: u ~ U(0, 1), shifted towards noise as Wan's schedulers do.

    sigma = shift * u / (1 + (shift - 1) * u). Returns (B,) in (0, 1).
    """
    u = torch.rand(batch_size, generator=generator)
    return shift * u / (1 + (shift - 1) * u)


def noise_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    layout: SequenceLayout,
    mode: LossMode = "target",
) -> torch.Tensor:
    """Selective noise: x_t = (1 - sigma) x0 + sigma eps on the target latents; context stays clean.

    With mode="all" (the paper's all-frames ablation) every latent frame is noised; the given frames
    still reach the model clean through the condition channels.
    """
    s = sigmas.to(x0.dtype).view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    if mode == "all":
        return noisy
    lc = layout.context_latent_frames
    return join_sequence(x0[:, :, :lc], noisy[:, :, lc:])


def join_sequence(context_latents: torch.Tensor, target_latents: torch.Tensor) -> torch.Tensor:
    """cat([clean context (B, C, Lc, h, w), target (B, C, L - Lc, h, w)]) along frames."""
    return torch.cat([context_latents, target_latents.to(context_latents.dtype)], dim=2)


def model_input(latents: torch.Tensor, mask: torch.Tensor, condition_latents: torch.Tensor) -> torch.Tensor:
    """The transformer's input: cat([x_t, M, cond]) on channels, Wan I2V order (16 + 4 + 16 = 36)."""
    return torch.cat([latents, mask.to(latents.dtype), condition_latents.to(latents.dtype)], dim=1)


def timestep_for(
    timesteps: torch.Tensor, layout: SequenceLayout, batch_size: int, per_token: bool = False
) -> torch.Tensor:
    """The diffusion timestep fed to the transformer (t = 1000 sigma).

    per_token=False: one value per sample, (B,), as in the paper.
    per_token=True: (B, tokens) with 0 on context tokens, so clean context is modulated as clean
    (the context K/V cache mode).
    """
    t = timesteps.reshape(-1).expand(batch_size) if timesteps.numel() == 1 else timesteps.reshape(-1)
    if not per_token:
        return t
    per = t[:, None].expand(batch_size, layout.sequence_tokens).clone()
    per[:, : layout.context_tokens] = 0
    return per


def frameprompt_loss(
    prediction: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    layout: SequenceLayout,
    mode: LossMode = "target",
) -> torch.Tensor:
    """MSE on the flow velocity v = eps - x0.

    mode="target" ("half-frames", the paper's default) averages over target latents only, so no
    gradient comes from context positions; mode="all" averages over every latent frame.
    """
    velocity = noise - x0
    if mode == "target":
        lc = layout.context_latent_frames
        prediction, velocity = prediction[:, :, lc:], velocity[:, :, lc:]
    elif mode != "all":
        raise ValueError(f"loss mode must be 'target' or 'all', got {mode!r}")
    return F.mse_loss(prediction.float(), velocity.float())
