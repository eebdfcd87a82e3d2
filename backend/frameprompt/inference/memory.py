"""Memory and speed options of a loaded pipeline, all through diffusers' own switches.

    fp8            transformer weights stored as float8 (e4m3), each layer cast up to the compute
                   dtype just for its forward (diffusers' layerwise casting, `enable_fp8_storage`);
                   patch embedding, norms, output projection and Wan's fp32 modules stay unquantised
    offload        "model": one component at a time on the GPU (`enable_model_cpu_offload`);
                   "group": transformer blocks streamed to the GPU one group ahead of use
                   (`enable_group_offload`, block level, on a CUDA stream); "sequential": every
                   layer on demand (`enable_sequential_cpu_offload`), the smallest and slowest.
                   CUDA only: on a CPU the weights already live in main memory.
    vae_tiling     encode/decode in overlapping spatial tiles (`AutoencoderKLWan.enable_tiling`)
    vae_slicing    one sample of a batch at a time through the VAE (`enable_slicing`)
    compile        `torch.compile` of the repeated transformer blocks (`compile_repeated_blocks`):
                   the first generation pays the compilation (the warm-up), later ones run faster

`estimate_memory` gives the paper arithmetic of each option for a model config (the 14B figures in
docs/performance.md come from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from frameprompt.errors import InputError

OFFLOAD_MODES = ("model", "group", "sequential")


@dataclass(frozen=True)
class MemoryOptions:
    """What `apply_memory_options` switches on (all off by default)."""

    fp8: bool = False
    offload: str | None = None
    vae_tiling: bool = False
    vae_slicing: bool = False
    compile: bool = False
    # torch.compile's backend; "eager" captures the graphs without generating code (tests, CPUs
    # without a C++ toolchain)
    compile_backend: str = "inductor"


def _cuda_device(device: str | torch.device | None) -> torch.device:
    resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if resolved.type != "cuda" or not torch.cuda.is_available():
        raise InputError(
            f"--offload needs a CUDA GPU, and this process runs on {resolved}",
            "drop --offload: on a CPU the weights already live in main memory (use --fp8 to store "
            "them in a quarter of the space)",
        )
    return resolved


def apply_memory_options(pipe: Any, options: MemoryOptions, device: str | torch.device | None) -> None:
    """Switch the options on for `pipe` (a FramePromptPipeline, already on `device` unless
    offloading, which places the components itself)."""
    if options.offload is not None and options.offload not in OFFLOAD_MODES:
        raise InputError(
            f"unknown offload mode {options.offload!r}", "use --offload " + ", ".join(OFFLOAD_MODES)
        )
    transformer = pipe.transformer
    if options.fp8:
        compute = transformer.dtype
        if compute not in (torch.float32, torch.bfloat16, torch.float16):
            raise InputError(f"--fp8 computes in the model dtype, which is {compute}", "use --dtype bfloat16")
        enable_fp8_storage(transformer, compute)
    if options.offload == "model":
        pipe.enable_model_cpu_offload(device=_cuda_device(device))
    elif options.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=_cuda_device(device))
    elif options.offload == "group":
        onload = _cuda_device(device)
        transformer.enable_group_offload(
            onload_device=onload,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
        # the other components are small next to the transformer and stay on the GPU
        for name in ("vae", "image_encoder", "text_encoder"):
            component = getattr(pipe, name, None)
            if component is not None:
                component.to(onload)
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    if options.vae_slicing:
        pipe.vae.enable_slicing()
    if options.compile:
        transformer.compile_repeated_blocks(fullgraph=False, dynamic=False, backend=options.compile_backend)


def enable_fp8_storage(transformer: Any, compute_dtype: torch.dtype) -> None:
    """Layerwise casting with float8 (e4m3) storage, through diffusers' `apply_layerwise_casting`.

    diffusers' `enable_layerwise_casting` also keeps Wan's whole `condition_embedder` unquantised;
    here its text embedder and timestep projection (most of a small model's weights outside the
    blocks) are stored in fp8 too, while the timestep embedder (`_keep_in_fp32_modules`), the patch
    embedding, the norms, the output projection and LoRA layers stay as they are, as diffusers has
    them. Measured on the embedded model (benchmarks/memory.py): the output stays above 45 dB PSNR
    against unquantised weights.
    """
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN
    from peft.tuners.lora.layer import LoraLayer

    keep = (
        DEFAULT_SKIP_MODULES_PATTERN
        + tuple(transformer._keep_in_fp32_modules or ())
        + ("patch_embedding", "norm")
    )
    apply_layerwise_casting(
        transformer,
        storage_dtype=torch.float8_e4m3fn,
        compute_dtype=compute_dtype,
        skip_modules_pattern=tuple(sorted(set(keep))),
        skip_modules_classes=(LoraLayer,),
    )


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters as they are stored now."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


# --- paper arithmetic ----------------------------------------------------------------------------
def transformer_parameters(config: dict[str, Any]) -> tuple[int, int]:
    """(all parameters, parameters inside the repeated blocks) of a WanTransformer3DModel config,
    counted without building it."""
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    dim, ffn, layers = heads * head_dim, int(config["ffn_dim"]), int(config["num_layers"])
    linear = lambda i, o: i * o + o  # noqa: E731 - weight and bias
    attention = 4 * linear(dim, dim) + 2 * dim  # q, k, v, out + rms norms of q and k
    cross = attention + (2 * linear(dim, dim) + dim if config.get("added_kv_proj_dim") else 0)
    block = attention + cross + linear(dim, ffn) + linear(ffn, dim) + 2 * dim + 6 * dim
    patch = int(config["in_channels"]) * dim * 4 + dim
    text, freq = int(config["text_dim"]), int(config["freq_dim"])
    embed = linear(text, dim) + linear(dim, dim) + linear(freq, dim) + linear(dim, dim) + linear(dim, 6 * dim)
    image = config.get("image_dim")
    if image:
        embed += 2 * int(image) + 2 * dim + linear(int(image), int(image)) + linear(int(image), dim)
    head = linear(dim, int(config["out_channels"]) * 4) + 2 * dim
    return layers * block + patch + embed + head, layers * block


def estimate_memory(config: dict[str, Any], activations_gib: float = 0.0) -> dict[str, float]:
    """GiB of GPU memory the transformer's weights need under each option (plus `activations_gib`
    for the working set of one forward, which the options do not change)."""
    total, in_blocks = transformer_parameters(config)
    gib = 2**30
    bf16 = total * 2 / gib
    layers = int(config["num_layers"])
    outside = (total - in_blocks) * 2 / gib
    dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    largest_layer = dim * int(config["ffn_dim"]) * 2 / gib  # an FFN linear
    return {
        "bf16": bf16 + activations_gib,
        # the blocks in float8; what diffusers skips (embeddings, norms) stays bf16
        "fp8 storage": (in_blocks * 1 + (total - in_blocks) * 2) / gib + activations_gib,
        # the transformer is the one component on the GPU while it runs
        "model offload": bf16 + activations_gib,
        # outside the blocks + two blocks in flight (the current group and the prefetched one)
        "group offload": outside + 2 * in_blocks / layers * 2 / gib + activations_gib,
        # one layer at a time
        "sequential offload": largest_layer + activations_gib,
    }
