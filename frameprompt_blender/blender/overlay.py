"""Viewport overlay: the projected OpenPose skeleton, drawn where the model will see each joint.

The pose is the one the exporter writes (``skeleton.armature_pose``: camera pixels + depth). Each joint
is lifted back onto its camera ray at its depth, so the overlay lines up with the character in any 3D
view, and shows exactly which keypoints are missing (unmapped bones or joints behind the camera).
Poses are computed in ``frame_change_post``/``depsgraph_update_post`` handlers, never while drawing.
"""

from __future__ import annotations

from typing import Any

import bpy
from mathutils import Vector

_handle: Any = None
_cache: dict[str, Any] = {"points": None, "key": None}
_busy = False


def camera_ray_point(
    scene: Any, camera: Any, px: float, py: float, depth: float, width: int, height: int
) -> Vector:
    """World point seen at pixel (px, py) (origin top-left) of a ``width``×``height`` image at ``depth``.

    Inverse of ``world_to_camera_view`` (for perspective cameras: depth = distance along the view axis).
    """
    frame = camera.data.view_frame(scene=scene)  # camera space, corners at z = -d: TR, BR, BL, TL
    br, bl, tl = frame[1], frame[2], frame[3]
    u, v = px / width, 1.0 - py / height  # 0..1 from the bottom-left
    if camera.data.type == "ORTHO":
        local = bl + (br - bl) * u + (tl - bl) * v
        local.z = -depth
    else:
        at_plane = bl + (br - bl) * u + (tl - bl) * v
        local = at_plane * (depth / -at_plane.z)
    return camera.matrix_world @ local


def skeleton_world_points(scene: Any, armature: Any, camera: Any, width: int, height: int) -> list[Any]:
    """18 world points (None where the joint is not visible) for the current frame."""
    from .skeleton import armature_pose

    pose = armature_pose(scene, armature, camera, scene.frame_current, width, height)
    depth = getattr(pose, "depth", None)
    out: list[Any] = []
    for i, (x, y, c) in enumerate(pose.keypoints):
        if c <= 0 or depth is None or not depth[i] > 0:
            out.append(None)
            continue
        out.append(camera_ray_point(scene, camera, float(x), float(y), float(depth[i]), width, height))
    return out


def _refresh(*_args: Any) -> None:
    global _busy
    if _busy:
        return
    _busy = True
    try:
        from .export import spec_from_scene

        context = bpy.context
        scene = context.scene
        if getattr(scene, "frameprompt", None) is None:
            _cache["points"] = None
            return
        spec = spec_from_scene(context, scene)
        arm, cam = bpy.data.objects.get(spec.armature), bpy.data.objects.get(spec.camera)
        if arm is None or cam is None:
            _cache["points"] = None
            return
        _cache["points"] = skeleton_world_points(scene, arm, cam, spec.width, spec.height)
    except Exception as exc:  # an overlay must never break the viewport
        _cache["points"] = None
        _cache["error"] = str(exc)
    finally:
        _busy = False


def _draw() -> None:
    points = _cache.get("points")
    if not points:
        return
    import gpu
    from bpy_extras.view3d_utils import location_3d_to_region_2d
    from gpu_extras.batch import batch_for_shader

    from ..core.keypoints import KEYPOINT_COLORS, LIMBS

    region, rv3d = bpy.context.region, bpy.context.region_data
    if region is None or rv3d is None:
        return
    p2d = [location_3d_to_region_2d(region, rv3d, p) if p is not None else None for p in points]
    coords, colors = [], []
    for i, (a, b) in enumerate(list(LIMBS)[:17]):
        if p2d[a] is None or p2d[b] is None:
            continue
        c = [v / 255.0 for v in KEYPOINT_COLORS[i % len(KEYPOINT_COLORS)]] + [1.0]
        coords += [tuple(p2d[a]), tuple(p2d[b])]
        colors += [c, c]
    pts, pcols = [], []
    for j, p in enumerate(p2d):
        if p is not None:
            pts.append(tuple(p))
            pcols.append([v / 255.0 for v in KEYPOINT_COLORS[j % len(KEYPOINT_COLORS)]] + [1.0])
    shader = gpu.shader.from_builtin("SMOOTH_COLOR")
    gpu.state.blend_set("ALPHA")
    gpu.state.line_width_set(3.0)
    if coords:
        batch_for_shader(shader, "LINES", {"pos": coords, "color": colors}).draw(shader)
    if pts:
        gpu.state.point_size_set(7.0)
        batch_for_shader(shader, "POINTS", {"pos": pts, "color": pcols}).draw(shader)
    gpu.state.line_width_set(1.0)
    gpu.state.point_size_set(1.0)
    gpu.state.blend_set("NONE")


def enable() -> None:
    global _handle
    if _handle is None:
        _handle = bpy.types.SpaceView3D.draw_handler_add(_draw, (), "WINDOW", "POST_PIXEL")
    for handlers in (bpy.app.handlers.frame_change_post, bpy.app.handlers.depsgraph_update_post):
        if _refresh not in handlers:
            handlers.append(_refresh)
    _refresh()


def disable() -> None:
    global _handle
    if _handle is not None:
        bpy.types.SpaceView3D.draw_handler_remove(_handle, "WINDOW")
        _handle = None
    for handlers in (bpy.app.handlers.frame_change_post, bpy.app.handlers.depsgraph_update_post):
        while _refresh in handlers:
            handlers.remove(_refresh)
    _cache["points"] = None


def is_enabled() -> bool:
    return _handle is not None
