"""Training samples per second with the latent cache against encoding every step, side by side.

    python benchmarks/train_step.py                          # tiny random models, 64x64, N=8 (CPU)
    python benchmarks/train_step.py --model PATH --size 480 --frames 16 --device cuda

Both variants run the same LoRA step (`frameprompt.training.trainer.training_loss` + backward + AdamW); the
"encode" variant additionally runs the frozen VAE on [reference | skeleton | target] and on the
condition video each step, which is what the latent cache removes. Prints the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: a tiny random one)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from frameprompt import method
    from frameprompt.loading import load_pipeline
    from frameprompt.method import SequenceLayout
    from frameprompt.testing import tiny_pipeline_dir
    from frameprompt.training.data import (
        CachedClips,
        build_latent_cache,
        load_clip_pixels,
        load_dataset,
        synthetic_dataset,
    )
    from frameprompt.training.lora import add_lora
    from frameprompt.training.trainer import _collate, training_loss
    from frameprompt.vae_io import encode_video

    work = Path(tempfile.mkdtemp(prefix="fp_bench_"))
    model = args.model or tiny_pipeline_dir(work / "model")
    clips = load_dataset(
        synthetic_dataset(work / "data", clips=args.batch_size, num_frames=args.frames, size=args.size)
    )
    pipe = load_pipeline(model, device=args.device, dtype=torch.float32)
    cache = build_latent_cache(pipe, clips, work / "cache")
    layout = SequenceLayout.for_models(args.frames, args.size, args.size, pipe.vae, pipe.transformer)
    cached_batch = _collate([CachedClips(cache)[i] for i in range(len(clips))])
    cached_batch = {k: v.to(args.device) for k, v in cached_batch.items()}
    pixels = [load_clip_pixels(c) for c in clips]

    transformer = pipe.transformer
    transformer.requires_grad_(False)
    add_lora(transformer, rank=args.lora_rank, alpha=args.lora_rank)
    transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=1e-4)

    def step(batch: dict[str, torch.Tensor]) -> None:
        loss, _ = training_loss(transformer, batch, layout, torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def encoded_batch() -> dict[str, torch.Tensor]:
        x0, cond = [], []
        for reference, skeleton, target in pixels:
            x0.append(encode_video(pipe.vae, torch.cat([reference, skeleton, target], 2))[0])
            cond.append(encode_video(pipe.vae, method.condition_pixels(reference, skeleton))[0])
        return {**cached_batch, "x0": torch.stack(x0), "condition": torch.stack(cond)}

    def timed(make_batch) -> float:
        step(make_batch())  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step(make_batch())
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return args.steps * args.batch_size / (time.perf_counter() - start)

    cached = timed(lambda: cached_batch)
    encoded = timed(encoded_batch)
    print(f"layout: N={args.frames}, {args.size}x{args.size}, batch {args.batch_size}, device {args.device}")
    print(f"{'variant':<22}{'samples/s':>12}")
    print(f"{'latent cache':<22}{cached:>12.2f}")
    print(f"{'encode every step':<22}{encoded:>12.2f}")
    print(f"ratio cache / encode: {cached / encoded:.1f}x")


if __name__ == "__main__":
    main()
