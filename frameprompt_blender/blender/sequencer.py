"""Sequencer import of result frames, across the VSE API changes of Blender 4.2-5.x.

- 4.2/4.3: ``SequenceEditor.sequences`` / ``sequences_all`` only;
- 4.4/4.5: ``strips`` / ``strips_all`` (the old names still exist, deprecated);
- 5.0+: ``sequences`` removed; the Sequencer edits ``context.sequencer_scene``, which may differ from
  ``context.scene``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bpy

MAX_CHANNELS = 128


def sequencer_scene(context: Any = None) -> bpy.types.Scene:
    """The scene the Sequencer edits: ``context.sequencer_scene`` (5.x) or ``context.scene``."""
    context = context or bpy.context
    return getattr(context, "sequencer_scene", None) or context.scene


def strips(se: Any) -> Any:
    """Top-level strips collection (has ``new_image``)."""
    return se.strips if hasattr(se, "strips") else se.sequences


def strips_all(se: Any) -> Any:
    """All strips, including those inside meta strips."""
    return se.strips_all if hasattr(se, "strips_all") else se.sequences_all


def strip_range(strip: Any) -> tuple[int, int]:
    """[start, end) of a strip on the timeline (``left_handle``/``right_handle`` on 5.2+)."""
    if hasattr(strip, "left_handle") and hasattr(strip, "right_handle"):
        return int(strip.left_handle), int(strip.right_handle)
    return int(strip.frame_final_start), int(strip.frame_final_end)


def first_free_channel(se: Any, start: int, end: int) -> int:
    """Lowest channel with no strip overlapping [start, end)."""
    used: set[int] = set()
    for s in strips_all(se):
        s_start, s_end = strip_range(s)
        if s_start < end and start < s_end:
            used.add(int(s.channel))
    for channel in range(1, MAX_CHANNELS + 1):
        if channel not in used:
            return channel
    raise RuntimeError("every Sequencer channel is occupied in this frame range; free a channel and retry")


def _blend_relative(path: Path) -> str:
    """A ``//``-relative path when the .blend is saved (the strip then survives moving the folder)."""
    if bpy.data.filepath:
        try:
            return bpy.path.relpath(str(path))
        except ValueError:  # another drive on Windows
            pass
    return str(path)


def import_image_sequence(
    scene: bpy.types.Scene,
    frame_paths: Sequence[str | os.PathLike],
    *,
    name: str,
    frame_start: int,
    channel: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """Add one image strip holding ``frame_paths`` (all in one folder, in order) at ``frame_start``.

    The strip goes on the first free channel unless ``channel`` is given; ``metadata`` is stored as
    custom properties on the strip. Returns the strip.
    """
    paths = [Path(p) for p in frame_paths]
    if not paths:
        raise ValueError("no result frames to import")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"result frames missing on disk: {missing[:3]}")
    folder = paths[0].parent
    if any(p.parent != folder for p in paths):
        raise ValueError("result frames must share one folder to form an image sequence")
    se = scene.sequence_editor or scene.sequence_editor_create()
    n = len(paths)
    if channel is None:
        channel = first_free_channel(se, frame_start, frame_start + n)
    strip = strips(se).new_image(
        name=name,
        filepath=_blend_relative(paths[0]),
        channel=channel,
        frame_start=frame_start,
        fit_method="FIT",
    )
    for p in paths[1:]:
        strip.elements.append(p.name)
    for key, value in (metadata or {}).items():
        strip[key] = value
    return strip


def find_strip(scene: bpy.types.Scene, name: str) -> Any | None:
    se = scene.sequence_editor
    if se is None or not name:
        return None
    return strips_all(se).get(name)


def show_in_sequencer(context: Any, scene: bpy.types.Scene, strip_name: str) -> bool:
    """Select the strip, move the playhead to it and open a Sequencer area if the screen has one."""
    strip = find_strip(scene, strip_name)
    if strip is None:
        return False
    se = scene.sequence_editor
    for s in strips_all(se):
        s.select = False
    strip.select = True
    se.active_strip = strip
    scene.frame_current = strip_range(strip)[0]
    screen = getattr(context, "screen", None)
    if screen is not None:
        for area in screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()
                break
    return True
