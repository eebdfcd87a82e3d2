"""The options of the data-set renderer, shared by `frameprompt dataset render` (which checks them and
starts the renderer) and the renderer itself in Blender's process (`blender.render_dataset`). Pure:
no bpy."""

from __future__ import annotations

import argparse

MOTIONS = ("walk", "run", "wave", "jump", "turn", "dance", "crouch")
ENGINES = {"workbench": "BLENDER_WORKBENCH", "eevee": "BLENDER_EEVEE_NEXT", "cycles": "CYCLES"}


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size must look like 256x256, got {text!r}") from error
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return w, h


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--blend", nargs="*", default=[], help=".blend files with a rigged character and actions"
    )
    parser.add_argument("--out", required=True, help="data set folder to write (existing clips are kept)")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--frames", type=int, required=True, help="N: skeleton/target frames per clip")
    parser.add_argument("--size", type=parse_size, default=(256, 256), help="WxH (default 256x256)")
    parser.add_argument(
        "--motions",
        default=",".join(MOTIONS),
        help=f"built-in motions without --blend (default {','.join(MOTIONS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=sorted(ENGINES), default="workbench", help="render engine")
    parser.add_argument("--samples", type=int, default=4, help="Cycles samples (default 4)")
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--armature", help="armature object name in the .blend files (default: the first)")
    parser.add_argument("--camera", help="camera object name (default: the scene camera)")
    parser.add_argument(
        "--characters",
        choices=["train", "test"],
        help="built-in scene: vary the procedural character, from the training or the held-out pool",
    )
    parser.add_argument(
        "--num-characters", type=int, default=50, help="how many characters of the pool (default 50)"
    )
    parser.add_argument("--no-progress", action="store_true")


def render_argv(args: argparse.Namespace) -> list[str]:
    """The renderer's command line for `args` parsed with `add_render_arguments`.

    Built from the parser's own option list, so a renderer started in another process (the bpy
    module or a `blender -b` binary) sees every option this process parsed, present and future.
    """
    parser = argparse.ArgumentParser(add_help=False)
    add_render_arguments(parser)
    argv: list[str] = []
    for action in parser._actions:  # argparse keeps a parser's options only here
        flag, value = action.option_strings[0], getattr(args, action.dest)
        if isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif value is None or value == []:
            continue
        elif action.nargs == "*":
            argv += [flag, *(str(v) for v in value)]
        elif action.type is parse_size:
            argv += [flag, f"{value[0]}x{value[1]}"]
        else:
            argv += [flag, str(value)]
    return argv
