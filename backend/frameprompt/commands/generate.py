"""frameprompt generate: animate a reference image with a folder of skeleton frames."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from frameprompt.errors import FramePromptError, InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="model folder (Wan2.1 I2V diffusers or original layout); default: embedded model"
    )
    parser.add_argument("--reference", required=True, help="reference image of the character (PNG/JPEG)")
    parser.add_argument(
        "--pose", required=True, help="folder of OpenPose JSON (0000_keypoints.json, ...) or skeleton PNGs"
    )
    parser.add_argument("--out", required=True, help="output folder: frames/0000.png ... and video.mp4")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--guidance", type=float, default=5.0, help="text guidance scale, used with --prompt")
    parser.add_argument("--prompt", help="optional text prompt (needs a model with a text encoder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:SCALE]",
        help="LoRA safetensors file (ours from `frameprompt finetune`, or a Wan LoRA in the diffusers, "
        "original Wan or kohya format) with its strength (default 1.0); repeat to combine several, e.g. a "
        "character LoRA and a step-distillation LoRA (then --steps 4 --guidance 1.0)",
    )
    parser.add_argument("--height", type=int, help="output height, multiple of 16 (default: reference's)")
    parser.add_argument("--width", type=int, help="output width, multiple of 16 (default: reference's)")
    parser.add_argument("--fps", type=int, default=16, help="frame rate of video.mp4 (default 16)")
    parser.add_argument(
        "--window-frames",
        type=int,
        default=40,
        help="frames per generation window (default 40, the paper's N)",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=8,
        help="frames each window carries over from the previous one (default 8)",
    )
    parser.add_argument(
        "--context-parallel",
        action="store_true",
        help="spread one job over several GPUs (diffusers' Ulysses context parallelism); launch with "
        "torchrun --nproc-per-node <GPUs> -m frameprompt generate --context-parallel ...",
    )
    add_speed_memory_arguments(parser)
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when available)")
    parser.add_argument(
        "--dtype", choices=["bfloat16", "float16", "float32"], help="default: bf16 on CUDA, fp32 on CPU"
    )


def add_speed_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """The step-cache and memory flags `generate` and `serve` share (docs/performance.md)."""
    parser.add_argument(
        "--cache",
        metavar="NAME[:VALUE]",
        help="step cache: first-block[:threshold], mag[:threshold] (needs mag_ratios.json in the model "
        "folder), taylorseer[:interval] or none (default); skips work on steps that barely change",
    )
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="store the transformer's weights in float8 (compute stays bf16/fp32)",
    )
    parser.add_argument(
        "--offload",
        choices=["model", "group", "sequential"],
        help="CUDA only: keep weights in CPU memory, moving a component (model), a block (group) or a "
        "layer (sequential) to the GPU when it runs",
    )
    parser.add_argument("--vae-tiling", action="store_true", help="VAE in spatial tiles (large frames)")
    parser.add_argument("--vae-slicing", action="store_true", help="VAE one sample at a time")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer blocks (slow first generation, faster after)",
    )


def memory_options(args: argparse.Namespace):
    from frameprompt.inference.memory import MemoryOptions

    return MemoryOptions(
        fp8=args.fp8,
        offload=args.offload,
        vae_tiling=args.vae_tiling,
        vae_slicing=args.vae_slicing,
        compile=args.compile,
    )


def run(args: argparse.Namespace) -> int:
    try:
        return _generate(args)
    except FramePromptError as error:
        print(f"frameprompt generate: {error}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _generate(args: argparse.Namespace) -> int:
    import torch

    from frameprompt.loading import load_pipeline
    from frameprompt.media import load_image, load_pose_frames, write_frames, write_video

    reference = load_image(args.reference)
    width = args.width or reference.width
    height = args.height or reference.height
    if width % 16 or height % 16:
        raise InputError(
            f"output size {width}x{height} is not a multiple of 16",
            f"pass --width {max(16, round(width / 16) * 16)} --height {max(16, round(height / 16) * 16)}",
        )
    from frameprompt.inference.step_cache import parse_step_cache
    from frameprompt.loading import parse_lora_arg

    step_cache = parse_step_cache(args.cache)  # a bad --cache fails before the model loads
    loras = [parse_lora_arg(item) for item in args.lora]
    poses = load_pose_frames(args.pose, width, height)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    from frameprompt.inference.parallel import init_distributed, launched_world_size

    ranks = None
    if args.context_parallel:
        ranks = init_distributed(args.device)
    elif launched_world_size() > 1:
        raise InputError(
            f"started as {launched_world_size()} processes without --context-parallel",
            "add --context-parallel to spread the job over the GPUs, or run a single process",
        )
    started = time.perf_counter()
    pipe = load_pipeline(
        args.model,
        device=ranks.device if ranks else args.device,
        dtype=dtype,
        loras=loras,
        memory=memory_options(args),
    )
    if ranks is not None:
        from frameprompt.inference.parallel import check_token_split, enable_context_parallel

        check_token_split(pipe, height, width, ranks.world_size)
        enable_context_parallel(pipe, ranks.world_size)
        pipe.set_progress_bar_config(disable=not ranks.is_main)
    say = print if ranks is None or ranks.is_main else (lambda *a, **k: None)
    say(
        f"loaded model in {time.perf_counter() - started:.1f}s on {pipe.device}; {len(poses)} frames at {width}x{height}"
        + (f"; context parallel over {ranks.world_size} processes" if ranks else "")
    )
    generator = torch.Generator("cpu").manual_seed(args.seed)
    # Any number of frames: longer animations are generated window by window (frameprompt.inference.windows).
    output = pipe.generate_long(
        reference.resize((width, height)),
        poses,
        window_frames=args.window_frames,
        overlap_frames=args.overlap,
        prompt=args.prompt,
        height=height,
        width=width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=generator,
        step_cache=step_cache,
    )
    if ranks is not None and not ranks.is_main:
        return 0  # every rank holds the same result; rank 0 writes it
    frames = output.frames[0]
    out = Path(args.out)
    write_frames(frames, out / "frames")
    video = write_video(frames, out / "video.mp4", fps=args.fps)
    print(f"wrote {len(frames)} frames to {out / 'frames'} and {video}")
    return 0
