"""Runners: what a worker calls to turn a JobSpec into frames.

- `PipelineRunner`: the FramePromptPipeline, loaded once per device (torch is imported here only).
- `EchoRunner`: no model; returns the skeletons blended with the reference after a few fake steps. It
  lets the Blender add-on, the CLI and the protocol tests exercise the whole server without a GPU.
- `resolve_runner_factory("pipeline" | "echo" | "module:callable", ...)` turns `--runner` into a factory.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from frameprompt.errors import FramePromptError
from frameprompt.server.worker import JobCancelled, JobSpec, RunContext, Runner, RunnerFactory

log = logging.getLogger("frameprompt.server")

DEFAULT_STEPS = 50
DEFAULT_WINDOW_FRAMES = 40  # the paper's N
DEFAULT_OVERLAP_FRAMES = 8
# A Wan2.1 checkpoint's native size when nothing says otherwise: 480P (landscape).
WAN_NATIVE_SIZE = (832, 480)
TRAINING_INFO_FILE = "frameprompt_training.json"


def native_size_of(model_dir: str | os.PathLike | None) -> tuple[int, int]:
    """(width, height) the model was made for: `frameprompt_training.json`'s width/height (the embedded
    model and `frameprompt finetune` outputs write it), else Wan2.1's 480P, 832x480."""
    if model_dir is None:
        from frameprompt.loading import DEFAULT_MODEL_DIR

        model_dir = DEFAULT_MODEL_DIR
    info = Path(model_dir) / TRAINING_INFO_FILE
    try:
        data = json.loads(info.read_text()) if info.is_file() else {}
    except (OSError, ValueError):
        log.warning("cannot read %s; assuming the native size %dx%d", info, *WAN_NATIVE_SIZE)
        data = {}
    w, h = (
        data.get("width") if isinstance(data, dict) else None,
        data.get("height") if isinstance(data, dict) else None,
    )
    if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
        return w, h
    return WAN_NATIVE_SIZE


def model_size_of(
    vae: Any, transformer: Any, native: tuple[int, int], window_frames: int | None
) -> dict[str, Any]:
    """The hello's `model_size` for a Wan VAE + transformer pair. Sizes are multiples of the VAE's spatial
    factor times the patch (`SequenceLayout.multiples_for`). The largest: diffusers' WanRotaryPosEmbed
    slices its table of `rope_max_seq_len` rows by the patch grid (latent size // patch), so each side
    takes at most rope_max_seq_len patches, i.e. rope_max_seq_len * patch * spatial factor pixels. The
    native size is scaled down (keeping its aspect) when it is larger than that."""
    from frameprompt.method import SequenceLayout
    from frameprompt_blender.wire.protocol import fit_size

    _, multiple = SequenceLayout.multiples_for(vae, transformer)
    spatial = int(vae.config.scale_factor_spatial)
    _, p_h, p_w = (int(p) for p in transformer.config.patch_size)
    rope = int(getattr(transformer.config, "rope_max_seq_len", 0) or 1024)
    max_w, max_h = rope * p_w * spatial, rope * p_h * spatial
    nw, nh = native
    if nw % multiple or nh % multiple or nw > max_w or nh > max_h:
        nw, nh = fit_size(nw / nh, nw * nh, multiple, max_w, max_h)
    return {
        "native_width": nw,
        "native_height": nh,
        "max_width": max_w,
        "max_height": max_h,
        "size_multiple": multiple,
        "window_frames": window_frames,
    }


class PipelineRunner:
    """The real model on one device. LoRAs are attached on first use and switched per job.

    `step_cache` is the `--cache` of jobs that do not choose one (`params.cache`); `fp8`, `offload`,
    `vae_tiling`, `vae_slicing` and `compile` are `frameprompt.inference.memory.MemoryOptions`;
    `lora_dir` is where a job's `params.loras` names are looked up.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None,
        device: str,
        *,
        dtype: Any = None,
        default_steps: int = DEFAULT_STEPS,
        default_guidance: float | None = None,
        window_frames: int = DEFAULT_WINDOW_FRAMES,
        overlap_frames: int = DEFAULT_OVERLAP_FRAMES,
        step_cache: str | None = None,
        fp8: bool = False,
        offload: str | None = None,
        vae_tiling: bool = False,
        vae_slicing: bool = False,
        compile: bool = False,
        lora_dir: str | os.PathLike | None = None,
    ) -> None:
        from frameprompt.inference.memory import MemoryOptions
        from frameprompt.inference.step_cache import parse_step_cache
        from frameprompt.inference.windows import fit_overlap_frames, fit_window_frames
        from frameprompt.loading import load_pipeline
        from frameprompt.method import SequenceLayout

        self.model_path = model_path
        self.device = device
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.step_cache = parse_step_cache(step_cache)
        self.lora_dir = lora_dir
        memory = MemoryOptions(
            fp8=fp8, offload=offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing, compile=compile
        )
        self.pipe = load_pipeline(model_path, device=device, dtype=dtype, memory=memory)
        # the longest window the model's position table takes, not more than asked (long jobs run in
        # windows of this length); the overlap stays below it
        vae, transformer = self.pipe.vae, self.pipe.transformer
        multiple, _ = SequenceLayout.multiples_for(vae, transformer)
        self.window_frames = fit_window_frames(vae, transformer, int(window_frames))
        self.overlap_frames = fit_overlap_frames(self.window_frames, int(overlap_frames), multiple)
        if self.window_frames != int(window_frames) or self.overlap_frames != int(overlap_frames):
            log.info(
                "window %d frames (asked %d), overlap %d (asked %d): the longest the model's position "
                "table takes", self.window_frames, window_frames, self.overlap_frames, overlap_frames,
            )  # fmt: skip
        self.model_size = model_size_of(
            self.pipe.vae, self.pipe.transformer, native_size_of(model_path), self.window_frames
        )
        self._adapters: dict[str, str] = {}  # lora path -> adapter name
        self._active: tuple[tuple[str, float], ...] = ()
        self._previewer: Any = None

    def capabilities(self) -> dict[str, Any]:
        name = Path(self.model_path).name if self.model_path else "embedded-default"
        size = self.model_size
        return {
            "model": name,
            "default_steps": self.default_steps,
            # any frame count: longer jobs run window by window (frameprompt.inference.windows)
            "frame_multiple": 1,
            "window_frames": self.window_frames,
            "overlap_frames": self.overlap_frames,
            "resolution_multiple": size["size_multiple"],
            "model_size": size,  # the server clamps it to its limits (hello `model_size`)
        }

    def _job_loras(self, job: JobSpec) -> list[tuple[str, float]]:
        """(path, scale) of each LoRA the job asks for: `params.loras` (names in `lora_dir`) or the
        single `lora` the worker resolved."""
        p = job.params
        if p.loras:
            from frameprompt_blender.wire.protocol import ProtocolError

            files = lora_files(self.lora_dir)
            missing = [item["name"] for item in p.loras if item["name"] not in files]
            if missing:
                raise ProtocolError(
                    "unknown_lora",
                    f"the server has no LoRA named {missing[0]!r}",
                    "available: " + (", ".join(sorted(files)) or "none"),
                )
            return [(files[item["name"]], float(item.get("scale", 1.0))) for item in p.loras]
        if job.lora_path is None:
            return []
        return [(job.lora_path, p.lora_scale if p.lora_scale is not None else 1.0)]

    def _use_loras(self, loras: list[tuple[str, float]], ctx: RunContext) -> None:
        if not loras:
            if self._active:
                self.pipe.disable_lora()
                self._active = ()
            return
        from frameprompt.loading import attach_lora

        for path, _ in loras:
            if path not in self._adapters:
                ctx.progress("loading", message=f"loading LoRA {Path(path).name}")
                self._adapters[path] = attach_lora(self.pipe, path)
        self.pipe.enable_lora()
        # adapters not named here get weight 0 by being left out of the active set
        self.pipe.set_adapters([self._adapters[path] for path, _ in loras], [scale for _, scale in loras])
        self._active = tuple(loras)

    def __call__(self, job: JobSpec, ctx: RunContext) -> Sequence[Any]:
        import torch

        started = time.monotonic()  # previews are budgeted against the job's time from here
        p = job.params
        self._use_loras(self._job_loras(job), ctx)
        from frameprompt.inference.windows import plan_windows
        from frameprompt.method import SequenceLayout

        steps = p.steps or self.default_steps
        generator = torch.Generator(device="cpu").manual_seed(int(p.seed or 0))
        multiple, _ = SequenceLayout.multiples_for(self.pipe.vae, self.pipe.transformer)
        windows = len(plan_windows(len(job.poses), self.window_frames, self.overlap_frames, multiple))
        total = steps * windows  # progress counts the steps of every window
        done = 0
        if ctx.preview_mode != "off" and self._previewer is None:
            from frameprompt.server.previews import LatentPreviewer

            self._previewer = LatentPreviewer()
        previewer = self._previewer

        def on_step_end(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
            nonlocal done
            if ctx.cancelled:
                pipe._interrupt = True
                return kwargs
            done += 1
            ctx.progress("denoising", done, total)
            if previewer is not None:
                previewer.offer(ctx, pipe, kwargs["latents"], done, total, started)
            if i + 1 == steps:
                ctx.progress("decoding")
            return kwargs

        call: dict[str, Any] = dict(
            reference_image=job.reference,
            pose_frames=list(job.poses),
            prompt=p.prompt,
            num_inference_steps=steps,
            generator=generator,
            callback_on_step_end=on_step_end,
            output_type="pil",
            step_cache=self.step_cache if p.cache is None else p.cache,
        )
        if p.width and p.height:
            call.update(width=p.width, height=p.height)
        guidance = p.guidance_scale if p.guidance_scale is not None else self.default_guidance
        if guidance is not None:
            call["guidance_scale"] = guidance
        ctx.progress("denoising", 0, total)
        try:
            out = self.pipe.generate_long(
                window_frames=self.window_frames, overlap_frames=self.overlap_frames, **call
            )
        except FramePromptError as exc:
            if exc.code == "cancelled" or ctx.cancelled:
                raise JobCancelled(job.job_id) from None
            raise
        return out.frames[0]


def lora_files(directory: str | os.PathLike | None) -> dict[str, str]:
    """The LoRAs a server offers: name -> path, for each `NAME.safetensors` file and each folder
    holding one in `directory` (the names jobs use)."""
    if directory is None:
        return {}
    out = {}
    try:
        for path in sorted(Path(directory).iterdir()):
            name = path.stem if path.suffix == ".safetensors" else path.name
            if path.suffix == ".safetensors" or (path.is_dir() and any(path.glob("*.safetensors"))):
                out[name] = str(path)
    except OSError:
        log.warning("cannot read the LoRA folder %s", directory)
    return out


class EchoRunner:
    """A stand-in model: `steps` fake denoising steps of `step_delay` seconds, then each skeleton blended
    50/50 with the reference. Deterministic; needs only Pillow."""

    def __init__(self, device: str = "cpu", *, step_delay: float = 0.0, steps: int = 4) -> None:
        self.device = device
        self.step_delay = float(step_delay)
        self.steps = int(steps)

    def capabilities(self) -> dict[str, Any]:
        return {"model": "echo (no model: skeletons blended with the reference)", "default_steps": self.steps}

    def __call__(self, job: JobSpec, ctx: RunContext) -> list[Any]:
        from PIL import Image

        steps = job.params.steps or self.steps
        size = (job.params.width or job.reference.width, job.params.height or job.reference.height)
        ref = job.reference.resize(size)

        def preview(step: int) -> Any:
            def make(mode: str, side: int) -> list[Any]:
                # the skeleton fading into the result: something to look at that changes with the steps
                small = [Image.blend(pose.resize(size), ref, 0.5 * step / steps) for pose in job.poses]
                for im in small:
                    im.thumbnail((side, side))
                return small

            return make

        for i in range(steps):
            ctx.check_cancelled()
            if self.step_delay:
                time.sleep(self.step_delay)
            ctx.progress("denoising", i + 1, steps)
            ctx.maybe_preview(i + 1, steps, preview(i + 1))
        return [Image.blend(ref, pose.resize(size), 0.5) for pose in job.poses]


def resolve_runner_factory(spec: str, model_path: str | None = None, **options: Any) -> RunnerFactory:
    """`--runner` to a factory `device -> runner`: 'pipeline' (default), 'echo', or 'package.module:callable'
    (called as callable(device, **options))."""
    if spec == "pipeline":

        def make_pipeline(device: str) -> Runner:
            return PipelineRunner(model_path, device, **options)

        return make_pipeline
    if spec == "echo":
        return lambda device: EchoRunner(device, **options)
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise FramePromptError(f"--runner {spec!r} is not 'pipeline', 'echo' or 'module:callable'")
    try:
        target: Callable[..., Runner] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise FramePromptError(f"cannot load runner {spec!r}: {exc}", "check the module path") from None
    return lambda device: target(device, **options)
