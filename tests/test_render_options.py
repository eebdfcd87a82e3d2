"""The renderer's options survive the hand-over to the Blender process (pure, no bpy)."""

from __future__ import annotations

import argparse

from frameprompt_blender.core.render_options import add_render_arguments, render_argv

REQUIRED = ["--out", "data", "--clips", "3", "--frames", "4"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_render_arguments(parser)
    return parser


def test_every_renderer_option_reaches_the_renderer_process():
    argv = REQUIRED + [
        "--blend", "a.blend", "b.blend", "--size", "32x48", "--motions", "walk,jump", "--seed", "5",
        "--engine", "cycles", "--samples", "2", "--fps", "24", "--armature", "Rig", "--camera", "Cam",
        "--characters", "test", "--num-characters", "7", "--no-progress",
    ]  # fmt: skip
    parser = _parser()
    args = parser.parse_args(argv)
    # the test sets every option away from its default, so an option added later must be added here
    defaults = vars(parser.parse_args(REQUIRED))
    unset = [k for k, v in defaults.items() if k not in ("out", "clips", "frames") and vars(args)[k] == v]
    assert not unset, f"set these options in the test too: {unset}"
    assert vars(parser.parse_args(render_argv(args))) == vars(args)


def test_defaults_are_left_to_the_renderer():
    args = _parser().parse_args(REQUIRED)
    assert vars(_parser().parse_args(render_argv(args))) == vars(args)
    assert "--characters" not in render_argv(args) and "--no-progress" not in render_argv(args)
