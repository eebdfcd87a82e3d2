"""Animate with FramePrompt: a Blender extension.

This package doubles as a plain Python package for the backend, which imports its pure modules
(`frameprompt_blender.core`). `bpy` is therefore imported only inside register()/unregister().
"""

from __future__ import annotations


def register() -> None:
    from .blender import register as _register

    _register()


def unregister() -> None:
    from .blender import unregister as _unregister

    _unregister()
