"""The reference image: a render of the scene at one frame, or an image file resized to the output size."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bpy


@contextlib.contextmanager
def _temporarily(obj: Any, **values: Any) -> Iterator[None]:
    old = {k: getattr(obj, k) for k in values}
    try:
        for k, v in values.items():
            setattr(obj, k, v)
        yield
    finally:
        for k, v in old.items():
            with contextlib.suppress(Exception):
                setattr(obj, k, v)


def _png_settings(settings: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if hasattr(settings, "media_type"):  # 5.0+: pick the media type before the file format
        values["media_type"] = "IMAGE"
    values.update(file_format="PNG", color_mode="RGB", color_depth="8")
    return values


def render_reference(
    scene: bpy.types.Scene, camera: bpy.types.Object, frame: int, width: int, height: int, out_path: Path
) -> Path:
    """Render ``scene`` through ``camera`` at ``frame`` with the scene's engine to a ``width``×``height`` PNG.

    The scene's resolution, camera, frame, output path, format and Sequencer switch are restored afterwards.
    The Sequencer is switched off for this render: otherwise a scene that already holds a FramePrompt
    strip would render that strip instead of the 3-D scene.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    r = scene.render
    settings = r.image_settings
    old_frame = scene.frame_current
    with (
        _temporarily(scene, camera=camera),
        _temporarily(
            r,
            resolution_x=int(width),
            resolution_y=int(height),
            resolution_percentage=100,
            pixel_aspect_x=1.0,
            pixel_aspect_y=1.0,
            filepath=str(out_path),
            use_file_extension=False,
            use_sequencer=False,
            use_compositing=r.use_compositing,
        ),
        _temporarily(settings, **_png_settings(settings)),
    ):
        try:
            scene.frame_set(int(frame))
            result = bpy.ops.render.render(write_still=True, scene=scene.name)
        finally:
            scene.frame_set(old_frame)
    if "FINISHED" not in result or not out_path.is_file():
        raise RuntimeError(
            f"rendering the reference with {r.engine} failed (no {out_path.name} written); "
            "check that the scene renders with F12"
        )
    return out_path


def image_reference(src: str | Path, width: int, height: int, out_path: Path) -> Path:
    """Copy an image file (any format Blender reads) to ``out_path`` as a ``width``×``height`` PNG."""
    src_abs = Path(bpy.path.abspath(str(src)))
    if not src_abs.is_file():
        raise FileNotFoundError(
            f"reference image {src_abs} not found; pick an existing image file in the panel"
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    img = bpy.data.images.load(str(src_abs), check_existing=False)
    try:
        if tuple(img.size) != (width, height):
            img.scale(int(width), int(height))
        img.filepath_raw = str(out_path)
        img.file_format = "PNG"
        img.save()
    finally:
        bpy.data.images.remove(img)
    return out_path
