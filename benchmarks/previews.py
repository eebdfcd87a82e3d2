"""What live previews cost a job: the server's PipelineRunner with previews off, "fast" and "vae", timed
side by side in one run (interleaved repeats, the same seed and inputs), through the worker's own
RunContext (its preview budget included). Prints each mode's median job time and its ratio to "off";
target <= 1.05.

    python benchmarks/previews.py [--model DIR] [--frames N] [--size PX] [--steps S] [--repeats R]

Without --model: the embedded default model (the product's model).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from frameprompt.server.runners import PipelineRunner
from frameprompt.server.worker import JobSpec, RunContext
from frameprompt.testing import demo_inputs

from frameprompt_blender.wire import protocol as P

MODES = ("off", "fast", "vae")


def run_once(runner: PipelineRunner, mode: str, args: argparse.Namespace) -> tuple[float, int, int]:
    """(seconds, previews sent, previews skipped) of one job."""
    reference, poses = demo_inputs(args.frames, args.size, seed=0)
    params = P.JobParams(steps=args.steps, seed=0, width=args.size, height=args.size)
    spec = JobSpec("bench", reference, poses, params, "cpu")
    preview = None if mode == "off" else {"mode": mode, "every": 1, "max_side": 128}
    sent: list[int] = []
    ctx = RunContext(
        "bench",
        "cpu",
        threading.Event(),
        lambda frames: None,
        preview=preview,
        emit_preview=lambda frames: sent.append(len(frames)),
    )
    t0 = time.perf_counter()
    runner(spec, ctx)
    return time.perf_counter() - t0, ctx.previews_sent, ctx.previews_skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runner = PipelineRunner(args.model, "cpu")
    for mode in MODES:  # warm-up: first calls allocate, and "fast" fits its projection once
        run_once(runner, mode, args)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    counts: dict[str, tuple[int, int]] = {}
    for _ in range(args.repeats):
        for mode in MODES:
            seconds, sent, skipped = run_once(runner, mode, args)
            times[mode].append(seconds)
            counts[mode] = (sent, skipped)
    base = statistics.median(times["off"])
    print(
        f"model {args.model or 'embedded'}: {args.frames} frames {args.size}x{args.size}, {args.steps} steps, "
        f"{args.repeats} interleaved repeats"
    )
    print(f"{'mode':<6} {'median s':>9} {'min s':>7} {'ratio':>6} {'previews sent/skipped (last job)':>34}")
    for mode in MODES:
        med = statistics.median(times[mode])
        sent, skipped = counts.get(mode, (0, 0))
        print(f"{mode:<6} {med:9.3f} {min(times[mode]):7.3f} {med / base:6.3f} {sent:>20}/{skipped}")


if __name__ == "__main__":
    main()
