"""Denoising with and without the context K/V cache: speed-up and max difference, side by side.

Same transformer, same seed, same inputs; the paper's layout (1 reference + N=40 skeleton + 40
target frames, 21 latent frames of which 11 are context). Two runs of FramePromptPipeline's loop:

    uncached  block-causal attention, per-token timesteps (0 on the context), whole sequence per step
    cached    the same model, the context's K/V extracted once per CFG branch, target tokens per step

They must agree (max |difference| of the final target latents <= 1e-3; the cached time includes the
extract passes). For reference it also times the paper's stock mode (full attention, one timestep,
a different model operating point, so no difference is reported for it).

Default: a CPU-sized model and resolution (the layout and the 50 inference steps are the paper's,
the width and resolution are scaled down). The one-time extract passes cost about one uncached step
per CFG branch, so fewer --steps show less of the per-step speed-up. --full: a 1.3B-shaped Wan2.1
I2V transformer (random weights), 480x832, 81 frames, 50 steps, bf16 on CUDA; also prints peak GPU
memory.

    python benchmarks/context_cache.py [--frames 40] [--steps 50] [--no-cfg] [--no-stock] [--threads 1]
    python benchmarks/context_cache.py --full
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from diffusers import WanTransformer3DModel
from frameprompt import method
from frameprompt.inference.context_cache import block_causal_attention, cached_forward, extract_context_cache
from frameprompt.inference.pipeline import default_scheduler
from frameprompt.method import SequenceLayout
from frameprompt.testing import TINY_TRANSFORMER

# Width scaled down for 2 CPU threads; the layout (1 + 40 + 40 frames) is the paper's.
CPU_MODEL = {
    **TINY_TRANSFORMER,
    "num_attention_heads": 4,
    "attention_head_dim": 64,
    "text_dim": 64,
    "ffn_dim": 1024,
    "num_layers": 4,
    "rope_max_seq_len": 1024,
}
# Wan2.1-Fun-1.3B-InP / the 1.3B I2V shape (CLIP image branch included).
FULL_MODEL = {
    **CPU_MODEL,
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "text_dim": 4096,
    "ffn_dim": 8960,
    "num_layers": 30,
    "image_dim": 1280,
    "added_kv_proj_dim": 1536,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def denoise(
    transformer: WanTransformer3DModel,
    layout: SequenceLayout,
    inputs: dict,
    steps: int,
    mode: str,
    guidance_scale: float,
) -> torch.Tensor:
    """FramePromptPipeline's loop (step 3 of __call__) on prepared latents; returns the target latents."""
    context, condition, mask = inputs["context"], inputs["condition"], inputs["mask"]
    branches = inputs["branches"]
    clip = inputs["clip"]
    lc = layout.context_latent_frames
    scheduler = default_scheduler()
    scheduler.set_timesteps(steps, device=context.device)
    latents = inputs["noise"].clone()
    with block_causal_attention(transformer, layout, enabled=mode != "stock"):
        caches = {}
        if mode == "cached":
            context_input = method.model_input(context, mask[:, :, :lc], condition[:, :, :lc])
            caches = {
                k: extract_context_cache(transformer, context_input, v, clip) for k, v in branches.items()
            }

        def predict(t: torch.Tensor, branch: str) -> torch.Tensor:
            if mode == "cached":
                x = method.model_input(latents, mask[:, :, lc:], condition[:, :, lc:])
                return cached_forward(transformer, x, t, caches[branch])
            x = method.model_input(method.join_sequence(context, latents), mask, condition)
            timestep = method.timestep_for(t, layout, 1, per_token=mode == "uncached")
            out = transformer(
                x, timestep, branches[branch], encoder_hidden_states_image=clip, return_dict=False
            )[0]
            return out[:, :, lc:]

        for t in scheduler.timesteps:
            velocity = predict(t, "cond")
            if "uncond" in branches:
                uncond = predict(t, "uncond")
                velocity = uncond + guidance_scale * (velocity - uncond)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    return latents


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, this process's CPU seconds, result)."""
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full", action="store_true", help="1.3B-shaped model, 480x832, 50 steps, bf16, CUDA"
    )
    parser.add_argument("--frames", type=int, default=40, help="N skeleton = target frames (paper: 40)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--layers", type=int, help="override the number of transformer blocks")
    parser.add_argument("--no-cfg", action="store_true", help="one branch instead of two (no text CFG)")
    parser.add_argument("--no-stock", action="store_true", help="skip timing the paper's full-attention mode")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode, alternating (best of)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()

    config = dict(FULL_MODEL if args.full else CPU_MODEL)
    if args.layers:
        config["num_layers"] = args.layers
    height = args.height or (480 if args.full else 128)
    width = args.width or (832 if args.full else 128)
    steps = args.steps or 50  # the paper's inference steps (appendix A.1.1)
    device = torch.device(args.device or ("cuda" if args.full else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.full else "float32"))

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**config)
    transformer = transformer.to(dtype).eval()
    for name, param in transformer.named_parameters():  # what from_pretrained(torch_dtype=...) keeps
        if set(transformer._keep_in_fp32_modules).intersection(name.split(".")):
            param.data = param.data.float()
    layout = SequenceLayout(args.frames, height, width)
    h, w = layout.latent_size
    g = torch.Generator(device="cpu").manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    context = rand(1, 16, layout.context_latent_frames, h, w)
    inputs = {
        "context": context,
        "condition": torch.cat([context, rand(1, 16, layout.target_latent_frames, h, w)], 2),
        "mask": method.build_context_mask(layout, 1, device, dtype),
        "noise": rand(1, 16, layout.target_latent_frames, h, w),
        "branches": {"cond": rand(1, 512, config["text_dim"])},
        "clip": rand(1, 257, config["image_dim"]) if config["image_dim"] else None,
    }
    if not args.no_cfg:
        inputs["branches"]["uncond"] = rand(1, 512, config["text_dim"])
    params = sum(p.numel() for p in transformer.parameters())
    print(
        f"model {params / 1e6:.1f}M params, {config['num_layers']} layers, dim "
        f"{config['num_attention_heads'] * config['attention_head_dim']}; {dtype}; {device}"
    )
    print(
        f"layout 1+{args.frames}+{args.frames} frames at {height}x{width}: {layout.latent_frames} latent frames "
        f"({layout.context_latent_frames} context), {layout.sequence_tokens} tokens "
        f"({layout.context_tokens} context); {steps} steps, {len(inputs['branches'])} CFG branch(es)"
    )

    modes = ["uncached", "cached"] + ([] if args.no_stock else ["stock"])
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    outputs: dict[str, torch.Tensor] = {}
    peak: dict[str, float] = {}
    with torch.no_grad():
        for mode in modes:  # warm-up (kernels, allocator)
            denoise(transformer, layout, inputs, 1, mode, 5.0)
        for _ in range(args.repeats):
            for mode in modes:  # alternating, so drifting machine load hits all alike
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds, cpu_seconds, outputs[mode] = timed(
                    lambda m=mode: denoise(transformer, layout, inputs, steps, m, 5.0), device
                )
                wall[mode].append(seconds)
                cpu[mode].append(cpu_seconds)
                if device.type == "cuda":
                    peak[mode] = torch.cuda.max_memory_allocated(device) / 2**30

    # Best of the repeats: on a shared machine, load only ever adds time. On CPU the process's CPU
    # time is shown too: other jobs change it much less than wall time (least with --threads 1).
    best = {m: min(v) for m, v in wall.items()}
    best_cpu = {m: min(v) for m, v in cpu.items()}
    for mode in modes:
        extra = f", CPU time {best_cpu[mode]:.3f} s" if device.type == "cpu" else ""
        extra += f", peak {peak[mode]:.2f} GiB" if mode in peak else ""
        runs = ", ".join(f"{x:.2f}" for x in wall[mode])
        print(
            f"{mode:>9}: wall {best[mode]:.3f} s ({best[mode] / steps:.3f} s/step){extra}  [wall runs: {runs}]"
        )
    clocks = [("wall", best)] + ([("CPU time", best_cpu)] if device.type == "cpu" else [])
    for label, times in clocks:
        line = (
            f"speed-up ({label}) cached vs uncached block-causal: {times['uncached'] / times['cached']:.2f}x"
        )
        if "stock" in times:
            line += f"; cached vs stock full attention: {times['stock'] / times['cached']:.2f}x"
        print(line)
    diff = (outputs["cached"].float() - outputs["uncached"].float()).abs().max().item()
    if dtype == torch.float32:
        verdict = "OK" if diff <= 1e-3 else "FAIL"
        note = f"{verdict}, limit 1e-3"
    else:  # bf16 rounds differently for other GEMM shapes; its own error vs float32 is ~1e-2 here
        note = f"{dtype} rounding; the 1e-3 check needs --dtype float32"
    print(f"max |cached - uncached| of the final target latents: {diff:.3e} ({note})")


if __name__ == "__main__":
    main()
