"""The bpy ring of the add-on: panel, operators, preferences, Sequencer import, batch entry.

Submodules are imported inside :func:`register` so that importing e.g. ``frameprompt_blender.blender.skeleton``
stays light and free of import cycles.
"""

from __future__ import annotations

from typing import Any

import bpy
from bpy.app.handlers import persistent

_registered: list[type] = []


def _classes() -> list[type]:
    from . import operators, panel, preferences, properties

    return [*properties.CLASSES, *preferences.CLASSES, *operators.CLASSES, *panel.CLASSES]


@persistent
def _on_load_pre(*_args: Any) -> None:
    # Closing or replacing the file: stop the job's timer and the client thread cleanly.
    from . import overlay
    from .jobs import MANAGER

    MANAGER.shutdown()
    overlay.disable()


@persistent
def _on_load_post(*_args: Any) -> None:
    # A file opened again after a close or a crash: re-attach the jobs it had running, import results.
    from .jobs import MANAGER
    from .preferences import get_settings

    if bpy.data.filepath:
        try:
            MANAGER.reattach_pending(bpy.data.filepath, get_settings())
        except Exception as exc:  # a handler must never break loading the file
            print(f"frameprompt: could not re-attach the file's jobs: {exc}", flush=True)


def register() -> None:
    from .properties import register_props

    for cls in _classes():
        bpy.utils.register_class(cls)
        _registered.append(cls)
    register_props()
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)
    if _on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    from . import overlay, previews
    from .jobs import MANAGER
    from .local_backend import stop_local_backend
    from .properties import unregister_props

    MANAGER.shutdown()
    stop_local_backend()  # the extension disabled: no backend left running for it
    overlay.disable()
    previews.clear()
    while _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    while _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    if _registered:
        unregister_props()
    for cls in reversed(_registered):
        bpy.utils.unregister_class(cls)
    _registered.clear()


def is_registered() -> bool:
    return bool(_registered)
