"""frameprompt calibrate: measure a model's MagCache ratios and store them in its folder."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder (default: the embedded model)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default %(default)s)")
    parser.add_argument("--frames", type=int, default=8, help="skeleton frames (default %(default)s)")
    parser.add_argument("--device")
    parser.add_argument("--context-cache", action="store_true", help="calibrate in context-cache mode")


def run(args: argparse.Namespace) -> int:
    """One generation on the demo inputs at the model's own size, in MagCache's calibrate mode."""
    import torch

    from frameprompt.inference.step_cache import calibrate_mag_ratios, save_mag_ratios
    from frameprompt.loading import load_pipeline, resolve_model_path
    from frameprompt.server.runners import native_size_of
    from frameprompt.testing import demo_inputs

    path = resolve_model_path(args.model)
    pipe = load_pipeline(path, device=args.device)
    width, height = native_size_of(path)
    reference, poses = demo_inputs(args.frames, max(width, height))
    reference = reference.resize((width, height))
    poses = [p.resize((width, height)) for p in poses]
    ratios = calibrate_mag_ratios(
        pipe,
        args.steps,
        reference_image=reference,
        pose_frames=poses,
        context_cache=args.context_cache or None,
        allow_approximate=True,
        generator=torch.Generator().manual_seed(0),
    )
    out = save_mag_ratios(path, ratios, steps=args.steps, context_cache=args.context_cache)
    print(f"wrote {len(ratios)} MagCache ratios to {out}")
    return 0
