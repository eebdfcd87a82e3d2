"""frameprompt dataset: render training clips in Blender, and validate data set folders."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import frameprompt_blender
from frameprompt.errors import FramePromptError

# the renderer's module in the add-on (imports bpy, so only ever run in a process of its own)
RENDERER = "frameprompt_blender.blender.render_dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from frameprompt_blender.core.render_options import add_render_arguments

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
    except (FramePromptError, FileNotFoundError, ValueError) as error:
        print(f"frameprompt dataset {args.action}: {error}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace) -> int:
    from frameprompt.training.data import validate_dataset

    report = validate_dataset(args.data, args.frame_multiple, args.size_multiple)
    print(report.describe())
    return 0 if report.ok else 1


def _render(args: argparse.Namespace) -> int:
    """Rendering runs in Blender's own process (bpy and torch never share one): the bpy module under
    this Python, or `blender -b` with the add-on's folder on its path."""
    from frameprompt_blender.core.render_options import render_argv

    forwarded = render_argv(args)
    if not args.blender:
        return subprocess.call([sys.executable, "-m", RENDERER, *forwarded])
    addon_parent = Path(frameprompt_blender.__file__).resolve().parents[1]
    expr = f"import sys; sys.path.insert(0, {str(addon_parent)!r}); from {RENDERER} import main; sys.exit(main())"
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
