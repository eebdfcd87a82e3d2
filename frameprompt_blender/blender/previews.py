"""The live preview the panel shows: the latest preview frames of the running job, as icons of a
``bpy.utils.previews`` collection; ``WindowManager.frameprompt.preview_frame`` scrubs through them."""

from __future__ import annotations

from typing import Any

import bpy

_COLLECTION: list[Any] = []


def _collection() -> Any:
    if not _COLLECTION:
        import bpy.utils.previews

        _COLLECTION.append(bpy.utils.previews.new())
    return _COLLECTION[0]


def show(job: Any) -> None:
    """Load the job's latest preview frames (a new set replaces the old one)."""
    icons = _collection()
    icons.clear()
    for i, path in enumerate(job.preview_frames):
        icons.load(f"{job.preview_step}:{i}", path, "IMAGE")
    wm_state = getattr(bpy.context.window_manager, "frameprompt", None)
    if wm_state is not None and wm_state.preview_frame >= len(job.preview_frames):
        wm_state.preview_frame = 0


def icon_id(job: Any, frame: int) -> int:
    """The icon of preview frame `frame` of the job's latest preview; 0 when there is none."""
    if not job.preview_frames or not _COLLECTION:
        return 0
    frame = max(0, min(frame, len(job.preview_frames) - 1))
    icon = _COLLECTION[0].get(f"{job.preview_step}:{frame}")
    return int(icon.icon_id) if icon is not None else 0


def clear() -> None:
    """Free the icons (add-on disabled)."""
    if _COLLECTION:
        import bpy.utils.previews

        bpy.utils.previews.remove(_COLLECTION.pop())
