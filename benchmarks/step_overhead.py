"""One denoising step of FramePromptPipeline vs diffusers' stock WanImageToVideoPipeline.

Same transformer, same token count (FramePrompt's 1 + 2N frames vs an I2V video of 1 + 2N frames),
timed side by side in one run by counting only the time spent inside each pipeline's step loop
(the callback fires after each step). Prints the per-step ratio; target <= 1.02.

    python benchmarks/step_overhead.py [--frames N] [--size PX] [--steps S] [--repeats R] [--width-scale K]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
from frameprompt.inference.pipeline import FramePromptPipeline
from frameprompt.testing import TINY_TRANSFORMER, demo_inputs, tiny_components


def step_times(run) -> list[float]:
    """Seconds between consecutive step-end callbacks (the loop body: model input, forward, step)."""
    stamps: list[float] = []

    def callback(pipe, i, t, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    run(callback)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frames", type=int, default=8, help="N skeleton frames (FramePrompt) -> I2V video of 1+2N"
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width-scale", type=int, default=8, help="multiply the tiny model's width/layers")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: a step is timed between two step-end callbacks")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    parts = tiny_components()
    k = args.width_scale
    config = {**TINY_TRANSFORMER, "attention_head_dim": 12 * k, "ffn_dim": 32 * k, "num_layers": 2 + k // 2}
    torch.manual_seed(0)
    parts["transformer"] = WanTransformer3DModel(**config).eval()
    frameprompt = FramePromptPipeline(**parts)
    stock = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, **parts)
    for pipe in (frameprompt, stock):
        pipe.set_progress_bar_config(disable=True)

    n, size = args.frames, args.size
    reference, poses = demo_inputs(n, size)
    text = torch.zeros(1, 512, config["text_dim"])

    def run_frameprompt(callback):
        frameprompt(
            reference,
            poses,
            num_inference_steps=args.steps,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=callback,
        )

    def run_stock(callback):
        stock(
            reference,
            prompt_embeds=text,
            negative_prompt_embeds=text,
            guidance_scale=1.0,
            height=size,
            width=size,
            num_frames=1 + 2 * n,
            num_inference_steps=args.steps,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=callback,
        )

    ours, theirs = [], []
    for _ in range(args.repeats):  # interleaved so drift in machine load hits both alike
        ours += step_times(run_frameprompt)
        theirs += step_times(run_stock)
    a, b = statistics.median(ours), statistics.median(theirs)
    tokens = (1 + 2 * n // 4) * (size // 16) ** 2
    print(
        f"transformer: {sum(p.numel() for p in parts['transformer'].parameters()) / 1e6:.2f} M params, "
        f"{tokens} tokens per step, {len(ours)} steps timed per pipeline"
    )
    print(f"FramePromptPipeline step: {a * 1e3:.2f} ms (median)")
    print(f"WanImageToVideoPipeline step: {b * 1e3:.2f} ms (median)")
    print(f"ratio FramePrompt / stock: {a / b:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
