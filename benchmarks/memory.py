"""Memory options against the default, side by side in one run, and the 14B figures on paper.

Each option runs in its own process (peak resident memory only grows within a process):

    generation  the embedded model, 8 frames at 64x64, 20 steps: transformer parameter bytes, peak
                RSS and its growth during the generation, PSNR of the frames against the default's
    VAE         the embedded VAE alone, encode + decode of 5 frames at 384x384 (tiling acts on frames
                above 256 px, so the generation size above would not show it)

Offloading needs CUDA and is reported as such on a CPU. Then the estimate of GPU memory for the
Wan2.1 I2V 14B and 1.3B transformers per option (`frameprompt.inference.memory.estimate_memory`).

    python benchmarks/memory.py [--steps 20] [--vae-size 384] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GENERATION = {"default": {}, "fp8": {"fp8": True}, "vae-slicing": {"vae_slicing": True}}
VAE = {"default": {}, "vae-tiling": {"vae_tiling": True}, "vae-slicing": {"vae_slicing": True}}
WAN_14B = dict(
    num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, in_channels=36,
    text_dim=4096, freq_dim=256, out_channels=16, image_dim=1280, added_kv_proj_dim=5120,
)  # fmt: skip
WAN_1_3B = {
    **WAN_14B,
    "num_attention_heads": 12,
    "ffn_dim": 8960,
    "num_layers": 30,
    "added_kv_proj_dim": 1536,
}
TARGET_RATIO, TARGET_PSNR = 3.5, 30.0


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(kind: str, options: dict, steps: int, vae_size: int, out: Path) -> None:
    import torch
    from frameprompt.inference.memory import MemoryOptions, apply_memory_options, parameter_bytes
    from frameprompt.loading import load_pipeline
    from frameprompt.testing import demo_inputs

    pipe = load_pipeline(None, device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    apply_memory_options(pipe, MemoryOptions(**options), "cpu")
    before = rss_mib()
    started = time.perf_counter()
    if kind == "generation":
        reference, poses = demo_inputs(8, 64)
        frames = pipe(
            reference,
            poses,
            num_inference_steps=steps,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).frames
    else:
        from frameprompt.vae_io import denormalize_latents, encode_video

        video = torch.rand(1, 3, 5, vae_size, vae_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            latents = denormalize_latents(encode_video(pipe.vae, video), pipe.vae)
            frames = pipe.vae.decode(latents).sample.float().numpy()
    np.save(out / "frames.npy", frames)
    result = {
        "seconds": time.perf_counter() - started,
        "params": parameter_bytes(pipe.transformer),
        "peak": rss_mib(),
        "growth": rss_mib() - before,
    }
    (out / "result.json").write_text(json.dumps(result))


def run_option(kind: str, options: dict, args: argparse.Namespace, work: Path) -> dict:
    out = work / f"{kind}-{len(list(work.iterdir()))}"
    out.mkdir()
    spec = json.dumps(
        {"kind": kind, "options": options, "steps": args.steps, "vae_size": args.vae_size, "out": str(out)}
    )
    subprocess.run([sys.executable, __file__, "--worker", spec, "--threads", str(args.threads)], check=True)
    result = json.loads((out / "result.json").read_text())
    result["frames"] = np.load(out / "frames.npy")
    return result


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vae-size", type=int, default=384, help="frame size of the VAE-only runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        spec = json.loads(args.worker)
        worker(spec["kind"], spec["options"], spec["steps"], spec["vae_size"], Path(spec["out"]))
        return

    from frameprompt.inference.memory import estimate_memory

    work = Path(tempfile.mkdtemp(prefix="fp_memory_"))
    verdict = True
    for kind, table in (("generation", GENERATION), ("VAE", VAE)):
        results = {name: run_option(kind.lower(), options, args, work) for name, options in table.items()}
        base = results["default"]
        print(f"\n== {kind} (embedded model, CPU, float32 compute)")
        print(
            f"{'option':<14}{'params MiB':>11}{'x smaller':>10}{'peak RSS MiB':>13}{'growth MiB':>11}{'PSNR dB':>9}{'s':>7}"
        )
        for name, r in results.items():
            ratio = base["params"] / r["params"]
            quality = psnr(r["frames"], base["frames"])
            print(
                f"{name:<14}{r['params'] / 2**20:>11.2f}{ratio:>10.2f}{r['peak']:>13.0f}{r['growth']:>11.0f}"
                f"{quality:>9.1f}{r['seconds']:>7.1f}"
            )
            if name == "fp8":
                met = ratio >= TARGET_RATIO and quality >= TARGET_PSNR
                verdict = verdict and met
                print(
                    f"fp8 parameter memory ratio vs float32: {ratio:.2f}x (target >= {TARGET_RATIO}x), "
                    f"PSNR {quality:.1f} dB (target >= {TARGET_PSNR}): {'met' if met else 'MISSED'}"
                )
    offload = "runs" if torch.cuda.is_available() else "needs CUDA: not measurable on this CPU"
    print(f"\noffload (model, group, sequential): {offload}")

    print(
        "\n== GPU memory of the transformer weights, on paper (GiB, bf16 compute, activations not included)"
    )
    estimates = {
        "Wan2.1 I2V 14B": estimate_memory(WAN_14B),
        "Wan2.1 1.3B (I2V shape)": estimate_memory(WAN_1_3B),
    }
    options = list(next(iter(estimates.values())))
    print(f"{'model':<26}" + "".join(f"{o:>20}" for o in options))
    for model, row in estimates.items():
        print(f"{model:<26}" + "".join(f"{row[o]:>20.2f}" for o in options))
    print(f"\nfp8 target {'met' if verdict else 'MISSED'}")


if __name__ == "__main__":
    main()
