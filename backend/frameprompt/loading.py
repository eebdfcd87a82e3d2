"""Load a `FramePromptPipeline` from local folders only; never from a hub.

Accepted layouts:
  * a saved FramePrompt pipeline (`model_index.json` naming `FramePromptPipeline`), e.g. the
    embedded default model or `save_pretrained` output;
  * the diffusers Wan2.1 I2V layout (`Wan-AI/Wan2.1-I2V-14B-480P-Diffusers`): transformer/, vae/,
    scheduler/, image_encoder/, image_processor/ and optionally tokenizer/, text_encoder/;
  * the original Wan layout of `alibaba-pai/Wan2.1-Fun-1.3B-InP`: config.json (`in_dim`, `dim`, ...)
    + diffusion_pytorch_model*.safetensors, with Wan2.1_VAE.pth (or a diffusers vae/ folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders.single_file_utils import (
    convert_wan_transformer_to_diffusers,
    convert_wan_vae_to_diffusers,
)
from safetensors import SafetensorError
from safetensors.torch import load_file

from frameprompt.errors import (
    CorruptWeightsError,
    FramePromptError,
    IncompatibleModelError,
    ModelNotFoundError,
)
from frameprompt.inference.memory import MemoryOptions, apply_memory_options
from frameprompt.inference.pipeline import FramePromptPipeline, default_scheduler
from frameprompt.inference.step_cache import load_mag_ratios

DOWNLOAD_HINT = (
    "download a Wan2.1 image-to-video checkpoint on a machine with internet access, e.g. "
    "`huggingface-cli download Wan-AI/Wan2.1-I2V-14B-480P-Diffusers --local-dir models/Wan2.1-I2V-14B-480P` "
    "(or alibaba-pai/Wan2.1-Fun-1.3B-InP for the 1.3B model), copy the folder here and pass its path "
    "with --model"
)
# The embedded default model ships inside the package.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on CUDA (Wan's training precision), float32 elsewhere (CPU bf16 is slow and lossy)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def resolve_model_path(model_path: str | os.PathLike | None) -> Path:
    if model_path is None:
        if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            raise ModelNotFoundError(
                "no --model given and the embedded default model is not installed in this build "
                f"({DEFAULT_MODEL_DIR})",
                "pass --model PATH to a Wan2.1 I2V checkpoint folder; " + DOWNLOAD_HINT,
            )
        return DEFAULT_MODEL_DIR
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model folder {path} does not exist", DOWNLOAD_HINT)
    if not path.is_dir():
        raise ModelNotFoundError(f"--model must be a folder, {path} is a file", DOWNLOAD_HINT)
    return path


def load_pipeline(
    model_path: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    lora: str | os.PathLike | None = None,
    lora_scale: float = 1.0,
    loras: Sequence[LoraSpec] = (),
    memory: MemoryOptions | None = None,
    load_text_encoder: bool = True,
) -> FramePromptPipeline:
    """Load a FramePrompt pipeline from a local folder (None: the embedded default model).

    The transformer runs in `dtype` (default bf16 on CUDA, float32 on CPU); the VAE and CLIP stay in
    float32. `lora`/`lora_scale` attach one LoRA, `loras` several at once, each with its strength
    (`load_loras`); `memory` sets fp8 weight storage, offloading, VAE tiling/slicing and compilation
    (`frameprompt.inference.memory`). MagCache ratios in the folder (`mag_ratios.json`) are read.
    Errors say what is wrong and what to download or change.
    """
    path = resolve_model_path(model_path)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    try:
        pipe = _load_any_layout(path, dtype, load_text_encoder)
    except FramePromptError:
        raise
    except (SafetensorError, EOFError) as error:
        raise CorruptWeightsError(
            f"a weights file under {path} is damaged or truncated ({error})",
            "download that file again (compare its size/sha256 with the source) and retry",
        ) from error
    except OSError as error:
        if "safetensors" in str(error).lower() or "header" in str(error).lower():
            raise CorruptWeightsError(
                f"a weights file under {path} could not be read ({error})",
                "download that file again (compare its size/sha256 with the source) and retry",
            ) from error
        raise
    check_transformer_layout(pipe.transformer, pipe.vae, path)
    pipe.mag_ratios = load_mag_ratios(path)
    specs = ([LoraSpec(Path(lora), lora_scale)] if lora is not None else []) + list(loras)
    memory = memory or MemoryOptions()
    if not memory.offload:
        pipe.to(device)
    if specs:  # before fp8 storage and compilation, which wrap the layers the adapters go into
        load_loras(pipe, specs)
    apply_memory_options(pipe, memory, device)
    return pipe


def _load_any_layout(path: Path, dtype: torch.dtype, load_text_encoder: bool) -> FramePromptPipeline:
    index = path / "model_index.json"
    if index.is_file():
        class_name = json.loads(index.read_text()).get("_class_name")
        if class_name == "FramePromptPipeline":
            _check_safetensors_under(path)
            return FramePromptPipeline.from_pretrained(
                path, dtype={"transformer": dtype, "text_encoder": dtype, "default": torch.float32}
            )
        return _load_diffusers_wan(path, dtype, load_text_encoder)
    if (path / "config.json").is_file() and list(path.glob("diffusion_pytorch_model*.safetensors")):
        return _load_original_wan(path, dtype)
    if (path / "transformer").is_dir() and (path / "vae").is_dir():
        return _load_diffusers_wan(path, dtype, load_text_encoder)
    raise ModelNotFoundError(
        f"{path} is not a Wan2.1 checkpoint folder: expected model_index.json (diffusers layout) or "
        "config.json + diffusion_pytorch_model*.safetensors (original Wan layout)",
        DOWNLOAD_HINT,
    )


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing ({what})", DOWNLOAD_HINT)
    return path


def _check_safetensors_under(path: Path) -> None:
    """Open every safetensors header first, so a damaged file is named instead of a deep stack trace."""
    from safetensors import safe_open

    for file in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as error:
            raise CorruptWeightsError(
                f"{file} is damaged or truncated ({error})",
                "download that file again (compare its size/sha256 with the source) and retry",
            ) from error


def _load_diffusers_wan(path: Path, dtype: torch.dtype, load_text_encoder: bool) -> FramePromptPipeline:
    _require(path / "transformer", "the transformer/ subfolder")
    _require(path / "vae", "the vae/ subfolder")
    _check_safetensors_under(path)
    transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", dtype=dtype)
    vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", dtype=torch.float32)
    parts: dict = {"transformer": transformer, "vae": vae, "scheduler": _scheduler(path)}
    if (path / "image_encoder").is_dir():
        from transformers import CLIPImageProcessor, CLIPVisionModel

        parts["image_encoder"] = CLIPVisionModel.from_pretrained(path / "image_encoder", dtype=torch.float32)
        parts["image_processor"] = CLIPImageProcessor.from_pretrained(path / "image_processor")
    if load_text_encoder and (path / "text_encoder").is_dir() and (path / "tokenizer").is_dir():
        from transformers import AutoTokenizer, UMT5EncoderModel

        parts["tokenizer"] = AutoTokenizer.from_pretrained(path / "tokenizer")
        parts["text_encoder"] = UMT5EncoderModel.from_pretrained(path / "text_encoder", dtype=dtype)
    return FramePromptPipeline(**parts)


def _scheduler(path: Path):
    if (path / "scheduler" / "scheduler_config.json").is_file():
        from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

        config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        cls = (
            FlowMatchEulerDiscreteScheduler
            if "FlowMatch" in config.get("_class_name", "")
            else UniPCMultistepScheduler
        )
        return cls.from_pretrained(path, subfolder="scheduler")
    return default_scheduler()


def original_wan_config(config: dict, state_dict: dict) -> dict:
    """An explicit diffusers config for an original-format Wan checkpoint.

    diffusers' single-file auto-detection maps every 1536-wide model to T2V-1.3B (16 input
    channels), which misreads Fun-InP; the config is therefore read from its own config.json and
    the weights' shapes.
    """
    dim, heads = int(config["dim"]), int(config["num_heads"])
    patch = state_dict["patch_embedding.weight"].shape[2:]
    image_dim = (
        state_dict["img_emb.proj.0.weight"].shape[0] if "img_emb.proj.0.weight" in state_dict else None
    )
    return dict(
        patch_size=tuple(int(p) for p in patch),
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=int(config.get("in_dim", state_dict["patch_embedding.weight"].shape[1])),
        out_channels=int(config.get("out_dim", 16)),
        text_dim=int(state_dict["text_embedding.0.weight"].shape[1]),
        freq_dim=int(config.get("freq_dim", state_dict["time_embedding.0.weight"].shape[1])),
        ffn_dim=int(config["ffn_dim"]),
        num_layers=int(config["num_layers"]),
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=float(config.get("eps", 1e-6)),
        image_dim=image_dim,
        added_kv_proj_dim=dim if image_dim is not None else None,
        rope_max_seq_len=1024,
    )


def _load_original_wan(path: Path, dtype: torch.dtype) -> FramePromptPipeline:
    config = json.loads((path / "config.json").read_text())
    state: dict = {}
    for shard in sorted(path.glob("diffusion_pytorch_model*.safetensors")):
        state.update(load_file(str(shard)))
    diffusers_config = original_wan_config(config, state)
    transformer = WanTransformer3DModel(**diffusers_config)
    missing, unexpected = transformer.load_state_dict(
        convert_wan_transformer_to_diffusers(state), strict=False
    )
    if missing or unexpected:
        raise IncompatibleModelError(
            f"{path} does not match a Wan2.1 transformer: {len(missing)} missing and {len(unexpected)} "
            f"unexpected weights (e.g. {(missing + unexpected)[:3]})",
            "use an original-format Wan2.1 I2V/Fun-InP checkpoint, or the diffusers layout",
        )
    _cast_keeping_fp32_modules(transformer, dtype)
    if (path / "vae").is_dir():
        vae = AutoencoderKLWan.from_pretrained(path / "vae", dtype=torch.float32)
    else:
        vae_file = _require(path / "Wan2.1_VAE.pth", "the Wan2.1 VAE weights, Wan2.1_VAE.pth")
        vae = AutoencoderKLWan()
        vae.load_state_dict(
            convert_wan_vae_to_diffusers(torch.load(vae_file, map_location="cpu", weights_only=True))
        )
    parts: dict = {"transformer": transformer, "vae": vae, "scheduler": default_scheduler()}
    if (path / "image_encoder").is_dir():
        from transformers import CLIPImageProcessor, CLIPVisionModel

        parts["image_encoder"] = CLIPVisionModel.from_pretrained(path / "image_encoder")
        parts["image_processor"] = CLIPImageProcessor.from_pretrained(path / "image_processor")
    return FramePromptPipeline(**parts)


def _cast_keeping_fp32_modules(model: WanTransformer3DModel, dtype: torch.dtype) -> None:
    """What `from_pretrained(dtype=...)` does: cast, but keep the modules Wan needs in float32."""
    model.to(dtype)
    keep = set(model._keep_in_fp32_modules or ())
    for name, param in model.named_parameters():
        if keep.intersection(name.split(".")):
            param.data = param.data.float()


def check_transformer_layout(transformer: WanTransformer3DModel, vae: AutoencoderKLWan, path: Path) -> None:
    """FramePrompt needs the I2V input layout: noisy latents + mask (T channels) + condition latents."""
    z, t = vae.config.z_dim, vae.config.scale_factor_temporal
    expected = 2 * z + t
    found = transformer.config.in_channels
    if found != expected:
        kind = "a text-to-video (T2V) checkpoint" if found == z else f"a model with {found} input channels"
        raise IncompatibleModelError(
            f"{path} holds {kind}; FramePrompt needs the image-to-video layout with {expected} input "
            f"channels ({z} noisy + {t} mask + {z} condition)",
            "use Wan2.1-I2V-14B-480P-Diffusers or Wan2.1-Fun-1.3B-InP, not a T2V or Control checkpoint",
        )


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to attach: a safetensors file (or a folder holding one) and its strength."""

    path: Path
    scale: float = 1.0


def parse_lora_arg(text: str) -> LoraSpec:
    """`--lora FILE[:SCALE]` -> a spec; a trailing `:number` is the scale, anything else is the path."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return LoraSpec(Path(head).expanduser(), float(tail))
        except ValueError:
            pass  # a path with a colon in it
    return LoraSpec(Path(text).expanduser(), 1.0)


def _lora_file(lora_path: str | os.PathLike) -> Path:
    path = Path(lora_path).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelNotFoundError(f"no .safetensors LoRA file in {path}", "pass the LoRA file itself")
        path = files[0]
    if not path.is_file():
        raise ModelNotFoundError(f"LoRA file {path} does not exist", "check the path given with --lora")
    return path


def attach_lora(pipe: FramePromptPipeline, lora_path: str | os.PathLike) -> str:
    """Load a LoRA as a new adapter (not yet active) and return its adapter name.

    diffusers' Wan loader reads the diffusers format (`transformer.`-prefixed keys, ours), the
    original Wan / ComfyUI layout (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `.alpha`,
    `lora_A`/`lora_B`) and musubi/kohya's (`lora_unet_blocks_0_...`), converting the last two with
    `lora_conversion_utils`.
    """
    path = _lora_file(lora_path)
    taken = set(getattr(pipe.transformer, "peft_config", None) or {})
    base = name = path.stem.replace(".", "_")
    suffix = 2
    while name in taken:  # two files of the same name from different folders
        name, suffix = f"{base}_{suffix}", suffix + 1
    try:
        pipe.load_lora_weights(str(path), adapter_name=name)
    except SafetensorError as error:
        raise CorruptWeightsError(f"LoRA file {path} is damaged ({error})", "copy the file again") from error
    except (RuntimeError, ValueError, KeyError) as error:
        raise IncompatibleModelError(
            f"LoRA {path.name} does not fit this model ({str(error).splitlines()[0][:200]})",
            "use a LoRA trained on this base model (same size and layout), in the diffusers, original Wan "
            "or kohya key format",
        ) from error
    return name


def load_lora(pipe: FramePromptPipeline, lora_path: str | os.PathLike, scale: float = 1.0) -> str:
    """Attach a LoRA from a safetensors file (or a folder holding one), make it the only active
    adapter, and return its adapter name."""
    name = attach_lora(pipe, lora_path)
    pipe.set_adapters([name], [scale])
    return name


def load_loras(pipe: FramePromptPipeline, specs: Sequence[LoraSpec]) -> list[str]:
    """Attach several LoRAs and activate them together, each with its own strength (peft adapters
    combined by `set_adapters`), e.g. a character LoRA with a step-distillation LoRA. Returns the
    adapter names in the order given."""
    names = [attach_lora(pipe, spec.path) for spec in specs]
    pipe.set_adapters(names, [float(spec.scale) for spec in specs])
    return names
