"""frameprompt dataset: render training clips in Blender, and validate data set folders."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from frameprompt.errors import FramePromptError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from frameprompt_blender.blender.render_dataset import add_render_arguments

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    render = sub.add_parser("render", help="render clips from .blend files or built-in motions")
    add_render_arguments(render)
    render.add_argument(
        "--blender",
        help="run this Blender binary (blender -b) instead of the bpy module, e.g. /opt/blender/blender",
    )
    validate = sub.add_parser("validate", help="check every clip and list the bad ones with the reason")
    validate.add_argument("data", help="data set folder")
    validate.add_argument(
        "--frame-multiple", type=int, default=4, help="N must be a multiple of this (Wan2.1: 4)"
    )
    validate.add_argument("--size-multiple", type=int, default=16, help="W, H must be multiples of this (16)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "render":
            return _render(args)
        return _validate(args)
    except (FramePromptError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"frameprompt dataset {args.action}: {error}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace) -> int:
    from frameprompt.training.data import validate_dataset

    report = validate_dataset(args.data, args.frame_multiple, args.size_multiple)
    print(report.describe())
    return 0 if report.ok else 1


def _render(args: argparse.Namespace) -> int:
    if args.blender:
        return _render_with_binary(args)
    from frameprompt_blender.blender.render_dataset import config_from_args, render_dataset

    folders = render_dataset(config_from_args(args))
    print(f"{len(folders)} clips in {args.out}")
    return 0


def _render_with_binary(args: argparse.Namespace) -> int:
    """Re-run the renderer inside `blender -b`; this package and the add-on's core go on its sys.path."""
    backend = Path(__file__).resolve().parents[2]
    repo = backend.parent
    forwarded = [
        "--out",
        str(Path(args.out).resolve()),
        "--clips",
        str(args.clips),
        "--frames",
        str(args.frames),
    ]
    forwarded += [
        "--size",
        f"{args.size[0]}x{args.size[1]}",
        "--motions",
        args.motions,
        "--seed",
        str(args.seed),
    ]
    forwarded += ["--engine", args.engine, "--samples", str(args.samples), "--fps", str(args.fps)]
    if args.armature:
        forwarded += ["--armature", args.armature]
    if args.camera:
        forwarded += ["--camera", args.camera]
    if args.no_progress:
        forwarded.append("--no-progress")
    if args.blend:
        forwarded += ["--blend", *(str(Path(b).resolve()) for b in args.blend)]
    expr = (
        f"import sys; sys.path[:0] = [{str(backend)!r}, {str(repo)!r}]; "
        "from frameprompt_blender.blender.render_dataset import main; sys.exit(main())"
    )
    command = [
        args.blender,
        "-b",
        "--factory-startup",
        "--python-exit-code",
        "1",
        "--python-expr",
        expr,
        "--",
    ]
    try:
        return subprocess.call(command + forwarded)
    except OSError as error:
        raise FramePromptError(
            f"cannot run Blender at {args.blender} ({error})", "pass the path of the blender executable"
        ) from error
