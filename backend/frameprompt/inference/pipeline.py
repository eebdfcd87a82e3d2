"""`FramePromptPipeline`: pose-driven character animation with an unmodified Wan2.1 I2V transformer.

prepare:  reference + skeleton frames -> VAE -> clean context latents, condition latents, mask
loop:     denoise the target latents only; the clean context is re-inserted at every step
decode:   context + target together, keep the N target frames

Cache mode (`context_cache=`, see `frameprompt.inference.context_cache`): block-causal attention with the
context at timestep 0, the context's K/V computed once per CFG branch, each step running only the
target tokens. Step caching (`step_cache=`, see `frameprompt.inference.step_cache`): diffusers' cache
hooks skip work on steps whose output barely changes; with the context cache they act on the target
tokens. Any number of frames: `generate_long` (windows, see `frameprompt.inference.windows`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKLWan,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanTransformer3DModel,
)
from diffusers.loaders import WanLoraLoaderMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from safetensors.torch import load_file, save_file

from frameprompt import method
from frameprompt.errors import FramePromptError, IncompatibleModelError, InputError
from frameprompt.inference.context_cache import (
    apply_training_info,
    block_causal_attention,
    cached_forward,
    extract_context_cache,
    trained_with_context_cache,
)
from frameprompt.inference.step_cache import (
    StepCacheConfig,
    StepCacheSpec,
    parse_step_cache,
    step_cache_config,
)
from frameprompt.inference.step_cache import step_cache as step_cache_hooks
from frameprompt.inference.windows import generate_windows
from frameprompt.method import SequenceLayout
from frameprompt.vae_io import decode_target_frames, encode_video

# diffusers' WanAttnProcessor splits image from text tokens as `len - 512`: any other text length
# runs silently wrong, so every text embedding is padded to exactly this many tokens.
TEXT_TOKENS = 512
NULL_EMBEDDING_FILE = "null_prompt_embeds.safetensors"


class GenerationCancelled(FramePromptError):
    code = "cancelled"


@dataclass
class FramePromptPipelineOutput(BaseOutput):
    """frames: list of B lists of N PIL images, or an array/tensor (B, N, H, W, 3) / (B, N, 3, H, W).

    approximate: True when cache mode ran on a model not trained with it (`allow_approximate=True`).
    """

    frames: Any
    approximate: bool = False


def default_scheduler() -> UniPCMultistepScheduler:
    """Wan2.1 I2V 480P's sampler: UniPC on flow sigmas, shift 3.0."""
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        num_train_timesteps=1000,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        final_sigmas_type="zero",
    )


class FramePromptPipeline(DiffusionPipeline, WanLoraLoaderMixin):
    """Animate a reference character with a sequence of skeleton frames (FramePrompt).

    Components:
        vae (`AutoencoderKLWan`), transformer (`WanTransformer3DModel`, I2V layout: 2 * z_dim + T input
        channels), scheduler (`UniPCMultistepScheduler` with flow sigmas or
        `FlowMatchEulerDiscreteScheduler`), and optionally image_encoder/image_processor (CLIP, needed
        when `transformer.config.image_dim` is set) and tokenizer/text_encoder (UMT5).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->transformer->vae"
    _optional_components = ["image_encoder", "image_processor", "tokenizer", "text_encoder"]
    _callback_tensor_inputs = ["latents"]

    # The text and CLIP encoders are used exactly as diffusers' Wan I2V pipeline uses them.
    _get_t5_prompt_embeds = WanImageToVideoPipeline._get_t5_prompt_embeds
    encode_image = WanImageToVideoPipeline.encode_image

    def __init__(
        self,
        vae: AutoencoderKLWan,
        transformer: WanTransformer3DModel,
        scheduler: UniPCMultistepScheduler | FlowMatchEulerDiscreteScheduler,
        image_encoder=None,
        image_processor=None,
        tokenizer=None,
        text_encoder=None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
            image_encoder=image_encoder,
            image_processor=image_processor,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
        )
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae.config.scale_factor_spatial)
        self.null_prompt_embeds = torch.zeros(1, TEXT_TOKENS, transformer.config.text_dim)
        # MagCache's per-model magnitude ratios (`step_cache.load_mag_ratios`), set by the loader
        self.mag_ratios: list[float] | None = None
        self._interrupt = False

    # --- persistence: the null text embedding travels with the pipeline --------------------------
    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        save_file(
            {"null_prompt_embeds": self.null_prompt_embeds.contiguous()},
            str(Path(save_directory) / NULL_EMBEDDING_FILE),
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> FramePromptPipeline:
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        null_file = Path(pretrained_model_name_or_path) / NULL_EMBEDDING_FILE
        if null_file.is_file():
            pipe.null_prompt_embeds = load_file(str(null_file))["null_prompt_embeds"]
        return pipe

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | Path | dict,
        adapter_name: str | None = None,
        **kwargs,
    ) -> None:
        """diffusers' Wan LoRA loader; a local LoRA's `frameprompt_training.json` (written by the
        trainer next to the weights) also tells the pipeline whether it was trained in cache mode."""
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, Path):
            source = str(source)
        super().load_lora_weights(source, adapter_name=adapter_name, **kwargs)
        if isinstance(source, str) and Path(source).exists():
            apply_training_info(self.transformer, source)

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # --- inputs ------------------------------------------------------------------------------
    def _frames_to_tensor(self, frames: list, height: int, width: int) -> torch.Tensor:
        """PIL frames or float np frames (H, W, 3) in [0, 1] -> (1, 3, F, H, W) in [-1, 1], resized
        to height x width."""
        pixels = self.video_processor.preprocess(list(frames), height=height, width=width)  # (F, 3, H, W)
        return pixels.permute(1, 0, 2, 3).unsqueeze(0)

    def encode_text(
        self,
        prompt: str | None,
        negative_prompt: str | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative text embeddings, each (1, 512, text_dim)."""

        def embed(text: str | None, given: torch.Tensor | None) -> torch.Tensor:
            if given is not None:
                return _pad_text(given)
            if text and self.text_encoder is not None and self.tokenizer is not None:
                return self._get_t5_prompt_embeds(
                    text, max_sequence_length=TEXT_TOKENS, device=device, dtype=dtype
                )
            if text:
                raise InputError(
                    "a text prompt was given but this model has no text encoder",
                    "pass prompt_embeds, drop the prompt, or load a model folder with tokenizer/ and text_encoder/",
                )
            return self.null_prompt_embeds

        return (
            embed(prompt, prompt_embeds).to(device, dtype),
            embed(negative_prompt or "", negative_prompt_embeds).to(device, dtype),
        )

    @torch.no_grad()
    def __call__(
        self,
        reference_image: PIL.Image.Image | np.ndarray,
        pose_frames: list[PIL.Image.Image] | list[np.ndarray],
        prompt: str | None = None,
        negative_prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        generator: torch.Generator | None = None,
        latent_zero_condition: bool = False,
        context_cache: bool | None = None,
        allow_approximate: bool = False,
        step_cache: StepCacheSpec | StepCacheConfig | str | None = None,
        given_frames: list[PIL.Image.Image] | list[np.ndarray] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> FramePromptPipelineOutput:
        """Generate N frames of the reference character following N skeleton frames.

        Args:
            reference_image: the character, resized to height x width.
            pose_frames: N skeleton images (OpenPose drawing); N must fit the VAE (Wan2.1: N % 4 == 0).
            prompt / negative_prompt, or prompt_embeds / negative_prompt_embeds (1, <=512, text_dim):
                optional text; without either the stored null embedding is used and classifier-free
                guidance is skipped.
            image_embeds: precomputed CLIP embeddings (1, tokens, image_dim), instead of image_encoder.
            height, width: output size, multiples of 16 (default: the reference image's size).
            guidance_scale: text CFG scale (only used with a prompt or prompt_embeds).
            latent_zero_condition: zeros in latent space for the target's condition latents instead
                of encoded zero pixels.
            context_cache: cache mode (block-causal attention, context at timestep 0, context K/V
                computed once per CFG branch). None: on if the model was trained with it
                (`context_cache.trained_with_context_cache`). False on such a model still runs it
                block-causal, without the cache. True on a model trained without it raises unless
                `allow_approximate=True`, which runs it and sets `output.approximate`.
            step_cache: skip work on steps whose output barely changes with one of diffusers' cache
                hooks, `"first-block[:threshold]"`, `"mag[:threshold]"` (needs `self.mag_ratios`) or
                `"taylorseer[:interval]"` (`frameprompt.inference.step_cache`), or one of those diffusers
                configs itself; None: every step in full.
            given_frames: continue a previous window: the first len(given_frames) target frames are
                given (mask 1, part of the context) instead of generated; a multiple of T below N.
                The output still has N frames, the given ones passed through the VAE.
            callback_on_step_end: called after every step as `fn(pipe, i, t, {"latents": target})`;
                set `pipe._interrupt = True` in it to cancel (raises `GenerationCancelled`).
            output_type: "pil", "np" ((B, N, H, W, 3) in [0, 1]), "pt" ((B, N, 3, H, W)) or "latent".

        Returns:
            `FramePromptPipelineOutput` with `frames`: N frames per sample.
        """
        self._interrupt = False
        reference = _as_pil(reference_image)
        poses = [_as_pil(p) for p in pose_frames]
        if height is None or width is None:
            width, height = reference.size
        # float arrays stay unquantised, so carried frames are exactly the previous window's output
        carried = [
            f if isinstance(f, np.ndarray) and f.dtype.kind == "f" else _as_pil(f) for f in given_frames or []
        ]
        layout = SequenceLayout.for_models(
            len(poses), height, width, self.vae, self.transformer, carried_frames=len(carried)
        )
        block_causal, use_cache, approximate = self._cache_mode(context_cache, allow_approximate)
        device = self._execution_device
        dtype = self.transformer.dtype
        step_config = self._step_cache_config(step_cache, num_inference_steps, dtype)

        # 1. text and image conditioning
        use_text = prompt is not None or prompt_embeds is not None
        do_cfg = use_text and guidance_scale > 1.0
        text, negative_text = self.encode_text(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, device, dtype
        )
        clip = self._image_conditioning(reference, image_embeds, device, dtype)

        # 2. the sequence: clean context, condition latents, mask (Section 3.3)
        ref_px = self._frames_to_tensor([reference], height, width)
        pose_px = self._frames_to_tensor(poses, height, width)
        given_px = self._frames_to_tensor(carried, height, width) if carried else None
        context = encode_video(self.vae, method.context_pixels(ref_px, pose_px, given_px)).to(device, dtype)
        if latent_zero_condition:
            condition = method.latent_zero_condition(context, layout)
        else:
            condition_px = method.condition_pixels(ref_px, pose_px, given_px)
            condition = encode_video(self.vae, condition_px).to(device, dtype)
        mask = method.build_context_mask(layout, 1, device, dtype)
        h, w = layout.latent_size
        latents = randn_tensor(
            (1, self.vae.config.z_dim, layout.target_latent_frames, h, w),
            generator=generator,
            device=device,
            dtype=dtype,
        )

        # 3. denoise the target latents only
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        lc = layout.context_latent_frames
        branches = {"cond": text, "uncond": negative_text} if do_cfg else {"cond": text}
        with block_causal_attention(self.transformer, layout, enabled=block_causal):
            caches = {}
            if use_cache:  # the context's K/V, once per CFG branch
                context_input = method.model_input(context, mask[:, :, :lc], condition[:, :, :lc])
                caches = {
                    name: extract_context_cache(self.transformer, context_input, embeds, clip)
                    for name, embeds in branches.items()
                }

            def predict(latents: torch.Tensor, t: torch.Tensor, branch: str) -> torch.Tensor:
                """The velocity of the target latents."""
                # each CFG branch keeps its own step-cache state
                with self.transformer.cache_context(branch) if step_config else nullcontext():
                    return predict_branch(latents, t, branch)

            def predict_branch(latents: torch.Tensor, t: torch.Tensor, branch: str) -> torch.Tensor:
                if use_cache:
                    x = method.model_input(latents, mask[:, :, lc:], condition[:, :, lc:])
                    return cached_forward(self.transformer, x, t.to(device), caches[branch])
                x = method.model_input(method.join_sequence(context, latents), mask, condition)
                timestep = method.timestep_for(t.to(device), layout, batch_size=1, per_token=block_causal)
                return self._predict(x, timestep, branches[branch], clip)[:, :, lc:]

            # installed after the context extraction above, which must run every block
            with (
                step_cache_hooks(self.transformer, step_config),
                self.progress_bar(total=len(timesteps)) as progress,
            ):
                for i, t in enumerate(timesteps):
                    velocity = predict(latents, t, "cond")
                    if do_cfg:
                        uncond = predict(latents, t, "uncond")
                        velocity = uncond + guidance_scale * (velocity - uncond)
                    latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                    if callback_on_step_end is not None:
                        outputs = callback_on_step_end(self, i, t, {"latents": latents})
                        latents = outputs.pop("latents", latents)
                    progress.update()
                    if self.interrupt:
                        raise GenerationCancelled(f"generation cancelled after step {i + 1}/{len(timesteps)}")
            caches.clear()

        if output_type == "latent":
            frames: Any = latents
        else:
            video = decode_target_frames(self.vae, context, latents, layout)  # (1, 3, N, H, W)
            frames = self.video_processor.postprocess_video(video.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)  # type: ignore[return-value]  # diffusers' return_dict=False convention
        return FramePromptPipelineOutput(frames=frames, approximate=approximate)

    def generate_long(
        self,
        reference_image: PIL.Image.Image | np.ndarray,
        pose_frames: list[PIL.Image.Image] | list[np.ndarray],
        window_frames: int = 40,
        overlap_frames: int = 8,
        output_type: str = "pil",
        **kwargs: Any,
    ) -> FramePromptPipelineOutput:
        """Any number of frames, window by window (`frameprompt.inference.windows`).

        Each window after the first keeps the reference and carries the last `overlap_frames`
        frames generated so far as given frames. Returns exactly len(pose_frames) frames. Other
        arguments are those of `__call__` (`generator` is shared by the windows).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(
                f"generate_long returns pixels: output_type must be pil, np or pt, not {output_type!r}"
            )
        video, approximate = generate_windows(
            self, reference_image, pose_frames, window_frames, overlap_frames, **kwargs
        )
        if output_type == "np":
            frames: Any = video
        elif output_type == "pt":
            frames = torch.from_numpy(video).permute(0, 1, 4, 2, 3)
        else:
            frames = [self.video_processor.numpy_to_pil(video[0])]
        return FramePromptPipelineOutput(frames=frames, approximate=approximate)

    def _step_cache_config(
        self, step_cache: StepCacheSpec | StepCacheConfig | str | None, steps: int, dtype: torch.dtype
    ) -> StepCacheConfig | None:
        if isinstance(step_cache, StepCacheConfig):
            return step_cache
        spec = parse_step_cache(step_cache)
        if spec is None:
            return None
        return step_cache_config(spec, steps, mag_ratios=self.mag_ratios, dtype=dtype)

    def _cache_mode(self, context_cache: bool | None, allow_approximate: bool) -> tuple[bool, bool, bool]:
        """(block-causal attention, K/V cache, approximate) for this model and request."""
        trained = trained_with_context_cache(self.transformer)
        use_cache = trained if context_cache is None else bool(context_cache)
        if use_cache and not trained and not allow_approximate:
            raise IncompatibleModelError(
                "cache mode was requested but this model was not trained with it (block-causal "
                "attention, context at timestep 0): its context K/V change with every step, so a cache "
                "would only approximate it",
                "drop context_cache / --context-cache, use a model fine-tuned with --context-cache, or "
                "pass allow_approximate=True to run it anyway (the output is labelled approximate)",
            )
        # model offload moves the transformer in a hook on its forward, which the cached path
        # (`cached_forward`, block by block) never calls
        if use_cache and type(getattr(self.transformer, "_hf_hook", None)).__name__ == "CpuOffload":
            raise InputError(
                "--offload model does not combine with the context cache: the cached steps run the "
                "transformer block by block, past the hook that moves it to the GPU",
                "use --offload group (block by block) or --offload sequential, or drop --offload",
            )
        return trained or use_cache, use_cache, use_cache and not trained

    def _predict(
        self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, clip: torch.Tensor | None
    ):
        return self.transformer(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=text,
            encoder_hidden_states_image=clip,
            return_dict=False,
        )[0]

    def _image_conditioning(self, reference, image_embeds, device, dtype) -> torch.Tensor | None:
        if self.transformer.config.image_dim is None:
            return None
        if image_embeds is None:
            if self.image_encoder is None or self.image_processor is None:
                raise InputError(
                    "this transformer expects CLIP image embeddings but the pipeline has no image encoder",
                    "load a model folder with image_encoder/ and image_processor/ (the Wan2.1 I2V Diffusers "
                    "layout) or pass image_embeds",
                )
            image_embeds = self.encode_image(reference, device)
        return image_embeds.to(device, dtype)


def _pad_text(embeds: torch.Tensor) -> torch.Tensor:
    if embeds.ndim == 2:
        embeds = embeds[None]
    if embeds.shape[1] > TEXT_TOKENS:
        raise InputError(
            f"text embeddings have {embeds.shape[1]} tokens, more than {TEXT_TOKENS}", "truncate the prompt"
        )
    return torch.nn.functional.pad(embeds, (0, 0, 0, TEXT_TOKENS - embeds.shape[1]))


def _as_pil(frame: PIL.Image.Image | np.ndarray) -> PIL.Image.Image:
    if isinstance(frame, PIL.Image.Image):
        return frame.convert("RGB")
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(array).convert("RGB")
