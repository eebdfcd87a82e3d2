"""The GPU check: bf16 inference options and a DeepSpeed ZeRO-2 fine-tune, one table.

On one CUDA GPU (default): a Wan2.1-1.3B-shaped I2V transformer with random weights, 480x832 and 81
frames (FramePrompt: 1 reference + 40 skeleton + 40 target frames), bf16, and Wan2.1's compression
(a tiny random VAE with the same 4x/8x factors stands in for the real one, whose cost is not what is
measured). Rows, each with seconds per denoising step and peak GPU memory:

    stock I2V step         diffusers' WanImageToVideoPipeline, the same transformer, 81 frames
    FramePrompt step       FramePromptPipeline, full attention (the paper's mode)
    + context cache        block-causal, the context's K/V once, target tokens per step
    + step cache           and First-Block Cache (`first-block`, its default threshold)
    + fp8 storage          context cache, transformer weights in float8 (a fresh model)
    + compile              context cache, `torch.compile` of the blocks (a fresh model; the warm-up,
                           i.e. the first generation, is reported apart)
    ZeRO-2 fine-tune       `frameprompt finetune --full` under `accelerate launch` with DeepSpeed
                           ZeRO-2 (configs/zero_stage2.json), gradient checkpointing, 20 steps,
                           16 frames at 480x480: seconds per step and peak memory

`--dry-run` runs every part on the CPU at tiny shapes in float32 (compile with the eager backend,
which exercises torch.compile's graph capture without a C++ toolchain; DeepSpeed in one process on
its CPU accelerator), so a change that breaks a part fails the test suite and not the GPU machine.

    bash scripts/gpu_check.sh            # CUDA, about 5 minutes on one H100/H200-class GPU
    bash scripts/gpu_check.sh --dry-run  # CPU, tiny, about a minute
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=36, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=1536, rope_max_seq_len=1024,
)  # fmt: skip


def settings(dry_run: bool) -> dict[str, Any]:
    from frameprompt.testing import TINY_TRANSFORMER_CLIP

    if dry_run:
        return dict(
            config=TINY_TRANSFORMER_CLIP, device=torch.device("cpu"), dtype=torch.float32, frames=4,
            height=32, width=32, steps=3, compile_backend="eager", train_size=32, train_frames=4,
            train_steps=2,
        )  # fmt: skip
    return dict(
        config=WAN_1_3B, device=torch.device("cuda"), dtype=torch.bfloat16, frames=40, height=480,
        width=832, steps=6, compile_backend="inductor", train_size=480, train_frames=16, train_steps=20,
    )  # fmt: skip


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB on Linux)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def make_transformer(s: dict[str, Any]):
    from diffusers import WanTransformer3DModel
    from frameprompt.loading import _cast_keeping_fp32_modules

    torch.manual_seed(0)
    with torch.device(s["device"]):
        transformer = WanTransformer3DModel(**s["config"]).eval()
    _cast_keeping_fp32_modules(transformer, s["dtype"])
    return transformer


def pipelines(transformer, s: dict[str, Any]):
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline
    from frameprompt.inference.pipeline import FramePromptPipeline, default_scheduler
    from frameprompt.testing import TINY_VAE

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_VAE).to(s["device"]).eval()
    parts = {"vae": vae, "transformer": transformer, "scheduler": default_scheduler()}
    ours = FramePromptPipeline(**parts)
    stock = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, **parts)
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
    return ours, stock


def timed_steps(run: Callable[[Callable], Any], s: dict[str, Any]) -> tuple[float, float]:
    """(seconds per denoising step, peak memory GiB) of one generation: the loop from the first
    patch embedding (the context extraction included) to the last step's end."""
    device = s["device"]
    marks: list[float] = []

    def step_end(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())
        return kwargs

    reset_peak(device)
    started: list[float] = []
    run(step_end, started)
    return (marks[-1] - started[0]) / len(marks), peak_gib(device)


def inference_rows(s: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    from frameprompt.inference.memory import MemoryOptions, apply_memory_options
    from frameprompt.testing import demo_inputs

    n, h, w = s["frames"], s["height"], s["width"]
    reference, poses = demo_inputs(n, 64)
    reference, poses = reference.resize((w, h)), [p.resize((w, h)) for p in poses]
    image_dim = s["config"]["image_dim"]
    clip = torch.randn(1, 257, image_dim, generator=torch.Generator().manual_seed(0)).to(
        s["device"], s["dtype"]
    )
    text = torch.zeros(1, 512, s["config"]["text_dim"], device=s["device"], dtype=s["dtype"])
    rows: list[tuple[str, float, float, str]] = []

    def ours_run(pipe, **options):
        def run(step_end, started):
            handle = pipe.transformer.patch_embedding.register_forward_pre_hook(
                lambda *_: started.append(time.perf_counter()) if not started else None
            )
            try:
                pipe(reference, poses, height=h, width=w, image_embeds=clip, num_inference_steps=s["steps"],
                     output_type="latent", generator=torch.Generator().manual_seed(0),
                     callback_on_step_end=step_end, allow_approximate=True, **options)  # fmt: skip
            finally:
                handle.remove()

        return run

    transformer = make_transformer(s)
    ours, stock = pipelines(transformer, s)
    # diffusers' I2V pipeline takes `image` or `image_embeds`, not both, yet needs the image for its
    # condition latents; the stand-in "encoder" returns the same CLIP embeddings FramePrompt gets
    stock.encode_image = lambda image, device: clip

    def stock_run(step_end, started):
        handle = transformer.patch_embedding.register_forward_pre_hook(
            lambda *_: started.append(time.perf_counter()) if not started else None
        )
        try:
            stock(reference, prompt_embeds=text, negative_prompt_embeds=text,
                  guidance_scale=1.0, height=h, width=w, num_frames=1 + 2 * n, num_inference_steps=s["steps"],
                  output_type="latent", generator=torch.Generator().manual_seed(0),
                  callback_on_step_end=step_end)  # fmt: skip
        finally:
            handle.remove()

    timed_steps(ours_run(ours, context_cache=True), s)  # warm-up (kernels, allocator)
    for name, run, note in (
        ("stock I2V step", stock_run, "diffusers WanImageToVideoPipeline"),
        ("FramePrompt step", ours_run(ours, context_cache=False), "full attention"),
        ("+ context cache", ours_run(ours, context_cache=True), "exact K/V cache"),
        ("+ step cache", ours_run(ours, context_cache=True, step_cache="first-block"), "first-block"),
    ):
        rows.append((name, *timed_steps(run, s), note))
    ours = stock = transformer = None  # freed before the next model is built

    transformer = make_transformer(s)
    ours, _ = pipelines(transformer, s)
    apply_memory_options(ours, MemoryOptions(fp8=True), s["device"])
    rows.append(("+ fp8 storage", *timed_steps(ours_run(ours, context_cache=True), s), "context cache on"))
    ours = transformer = None

    transformer = make_transformer(s)
    ours, _ = pipelines(transformer, s)
    apply_memory_options(ours, MemoryOptions(compile=True, compile_backend=s["compile_backend"]), s["device"])
    started = time.perf_counter()
    timed_steps(ours_run(ours, context_cache=True), s)
    warm_up = time.perf_counter() - started
    rows.append(
        ("+ compile", *timed_steps(ours_run(ours, context_cache=True), s),
         f"{s['compile_backend']}; warm-up generation {warm_up:.1f} s")
    )  # fmt: skip
    return rows


def training_row(s: dict[str, Any], work: Path, dry_run: bool) -> tuple[str, float, float, str]:
    """20 (dry run: 2) ZeRO-2 steps of the project's trainer in a child process under accelerate."""
    if importlib.util.find_spec("deepspeed") is None:
        return (
            "ZeRO-2 fine-tune",
            float("nan"),
            float("nan"),
            "NOT RUN: deepspeed is not installed (pip install deepspeed)",
        )
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from frameprompt.inference.pipeline import FramePromptPipeline, default_scheduler
    from frameprompt.testing import TINY_VAE
    from frameprompt.training.data import synthetic_dataset

    torch.manual_seed(0)
    model = work / "model"
    FramePromptPipeline(
        vae=AutoencoderKLWan(**TINY_VAE), transformer=WanTransformer3DModel(**s["config"]), scheduler=default_scheduler()
    ).save_pretrained(model)  # fmt: skip
    data = synthetic_dataset(work / "data", clips=2, num_frames=s["train_frames"], size=s["train_size"])
    ds_config = json.loads((ROOT / "configs" / "zero_stage2.json").read_text())
    env = dict(os.environ)
    if dry_run:  # DeepSpeed's CPU accelerator: no bf16, no communication overlap
        ds_config["bf16"] = {"enabled": False}
        ds_config["zero_optimization"]["overlap_comm"] = False
        env["DS_ACCELERATOR"] = "cpu"
    (work / "zero2.json").write_text(json.dumps(ds_config))
    # the CLI, then the process's peak GPU memory, which only the training process itself can read
    (work / "finetune.py").write_text(
        "import sys, torch\nfrom frameprompt.cli import main\nrc = main(sys.argv[1:])\n"
        "if torch.cuda.is_available():\n"
        "    print(f'peak_gpu_memory_gib={torch.cuda.max_memory_allocated() / 2**30:.3f}')\n"
        "sys.exit(rc)\n"
    )
    out = work / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed",
        "--deepspeed_config_file", str(work / "zero2.json"), "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no" if dry_run else "bf16", "--dynamo_backend", "no",
        str(work / "finetune.py"), "finetune", "--full", "--data", str(data), "--model", str(model),
        "--out", str(out), "--max-steps", str(s["train_steps"]), "--no-progress",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return (
            "ZeRO-2 fine-tune",
            float("nan"),
            float("nan"),
            f"FAILED (exit {proc.returncode}): {tail[0][:160]}",
        )
    steps = len((out / "train_log.csv").read_text().strip().splitlines()) - 1
    memory = float("nan")  # on the CPU there is no GPU peak to read
    for line in proc.stdout.splitlines():
        if line.startswith("peak_gpu_memory_gib="):
            memory = float(line.split("=", 1)[1])
    note = f"{steps} steps logged, gradient checkpointing, whole process incl. model load"
    return ("ZeRO-2 fine-tune", seconds / max(steps, 1), memory, note)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, every code path")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run with --dry-run on a CPU", file=sys.stderr)
        return 2
    s = settings(args.dry_run)
    if args.dry_run:
        torch.set_num_threads(1)
    started = time.perf_counter()
    rows = inference_rows(s)
    work = Path(tempfile.mkdtemp(prefix="fp_gpu_check_"))
    try:
        if not args.skip_training:
            rows.append(training_row(s, work, args.dry_run))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    unit = "GiB GPU" if s["device"].type == "cuda" else "GiB RSS"
    shape = f"{s['height']}x{s['width']}x{1 + 2 * s['frames']}"
    print(f"\ngpu_check: {shape} frames, {s['steps']} steps, {s['dtype']}, {s['device']}")
    print(f"{'what':<20}{'s/step':>10}{'peak ' + unit:>14}  note")
    for name, seconds, memory, note in rows:
        print(f"{name:<20}{seconds:>10.3f}{memory:>14.2f}  {note}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
