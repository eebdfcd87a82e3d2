"""OpenPose keypoints read exactly from a Blender armature (the `bpy` side; the maths is in `core`).

For each frame: `scene.frame_set`, evaluated pose-bone matrices, the bone map (preset detection from the
names, a guess from the hierarchy where they fall short, the armature's `frameprompt_bone_map`
overrides: `core.bone_maps`), Blender's camera projection
(`core.projection`, which matches `world_to_camera_view` and also honours sensor fit, shift, percentage
and pixel aspect), camera depth per keypoint. Points behind the camera (or past its clip range) and
points outside the frame get confidence 0; off-frame points keep their projected x, y, points behind the
camera are zeroed. Depth is always kept.

Canvas size: with `width`/`height` given, the projection is that of a width x height render of the camera
at 100 % with square pixels (exactly what `reference.render_reference` renders); with None, the scene's
own render settings (resolution x percentage, pixel aspect).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from ..core import bone_maps
from ..core.bone_maps import OVERRIDE_PROPERTY, BoneMapReport, JointRef, RestBone
from ..core.frame_names import frame_name, pose_file_name
from ..core.keypoints import FACE_KEYPOINTS, L_SHOULDER, NECK, NUM_KEYPOINTS, R_SHOULDER, Pose
from ..core.openpose_draw import save_pose_png
from ..core.openpose_json import write_pose_json
from ..core.projection import CameraParams, project_points

ESTIMATED_CONFIDENCE = 0.9  # face points placed from the head bone rather than read from a bone


def camera_params(scene: Any, camera_obj: Any, width: int | None = None, height: int | None = None,
                  depsgraph: Any = None) -> CameraParams:  # fmt: skip
    """Copy a camera (evaluated when a depsgraph is given) and the render settings into CameraParams."""
    if camera_obj is None or camera_obj.type != "CAMERA":
        raise ValueError(
            f"{getattr(camera_obj, 'name', None)!r} is not a camera; set the scene camera "
            "(Scene Properties > Camera) or pick one in the FramePrompt panel"
        )
    cam = camera_obj.evaluated_get(depsgraph) if depsgraph is not None else camera_obj
    d = cam.data
    if d.type not in ("PERSP", "ORTHO"):
        raise ValueError(
            f"camera {camera_obj.name!r} is {d.type}; skeleton export supports perspective and orthographic cameras"
        )
    r = scene.render
    if width is not None and height is not None:
        res = dict(resolution_x=int(width), resolution_y=int(height), resolution_percentage=100,
                   pixel_aspect_x=1.0, pixel_aspect_y=1.0)  # fmt: skip
    else:
        res = dict(resolution_x=r.resolution_x, resolution_y=r.resolution_y,
                   resolution_percentage=r.resolution_percentage,
                   pixel_aspect_x=r.pixel_aspect_x, pixel_aspect_y=r.pixel_aspect_y)  # fmt: skip
    return CameraParams(
        matrix_world=np.array(cam.matrix_world, dtype=np.float64),
        type=d.type,
        lens=d.lens,
        ortho_scale=d.ortho_scale,
        sensor_width=d.sensor_width,
        sensor_height=d.sensor_height,
        sensor_fit=d.sensor_fit,
        shift_x=d.shift_x,
        shift_y=d.shift_y,
        clip_start=d.clip_start,
        clip_end=d.clip_end,
        **res,
    )


def _override_source(armature_obj: Any):
    for holder in (armature_obj, getattr(armature_obj, "data", None)):
        if holder is None:
            continue
        try:
            value = holder.get(OVERRIDE_PROPERTY)
        except (AttributeError, TypeError):
            value = None
        if value is not None:
            if not isinstance(value, str):  # an IDProperty group set from Python: make it a dict
                value = value.to_dict() if hasattr(value, "to_dict") else dict(value)
            return value
    return None


def rest_bones(armature_obj: Any) -> list[RestBone]:
    """The armature's bones as the hierarchy guess reads them: parent, rest head and tail (armature space)."""
    return [
        RestBone(b.name, b.parent.name if b.parent else None, tuple(b.head_local), tuple(b.tail_local))
        for b in armature_obj.data.bones
    ]


def resolve_bone_map(armature_obj: Any, bone_map: Any = None) -> BoneMapReport:
    """The keypoint map for an armature.

    bone_map: None = detect the preset from the bone names, guess what they leave unmapped from the
    hierarchy (`bone_maps.detect_bone_map`) and apply the armature's `frameprompt_bone_map` custom
    property (object first, then armature data); a preset name ("mixamo", ...) = that preset alone plus
    the custom property; a dict / JSON string = overrides on top of the detected map (the custom property
    is then ignored); a BoneMapReport = used as is.
    """
    if armature_obj is None or armature_obj.type != "ARMATURE":
        raise ValueError(
            f"{getattr(armature_obj, 'name', None)!r} is not an armature; select the character's armature "
            "or pick it in the FramePrompt panel"
        )
    if isinstance(bone_map, BoneMapReport):
        return bone_map
    bones = rest_bones(armature_obj)
    names = [b.name for b in bones]
    if isinstance(bone_map, str) and bone_map in bone_maps.PRESETS:
        report = bone_maps.detect_bone_map(bones, bone_map)
        overrides = _override_source(armature_obj)
    else:
        report = bone_maps.detect_bone_map(bones)
        overrides = bone_map if bone_map is not None else _override_source(armature_obj)
    if overrides:
        report = bone_maps.apply_overrides(report, overrides, names, [o.name for o in bpy.data.objects])
    return report


def require_humanoid(armature_obj: Any, bone_map: Any = None) -> BoneMapReport:
    """`resolve_bone_map`, raising ValueError with what was found and the fix when the body joints
    (shoulders, elbows, wrists, hips, knees, ankles) are not all mapped."""
    report = resolve_bone_map(armature_obj, bone_map)
    if not report.ok:
        names = [b.name for b in armature_obj.data.bones]
        raise ValueError(bone_maps.not_humanoid_message(report, names, armature_obj.name))
    return report


def _rest_point(armature_obj: Any, ref: JointRef | None) -> np.ndarray | None:
    if ref is None or ref.kind == "object":
        return None
    b = armature_obj.data.bones.get(ref.name)
    if b is None:
        return None
    return np.array(b.tail_local if ref.end == "tail" else b.head_local, dtype=np.float64)


class SkeletonReader:
    """Reads poses from one armature through one camera; resolves the bone map once."""

    def __init__(self, armature_obj: Any, bone_map: Any = None, hide_occluded_face: bool = True) -> None:
        self.armature = armature_obj
        self.report = resolve_bone_map(armature_obj, bone_map)
        self.hide_occluded_face = hide_occluded_face
        self.face_local: dict = {}
        head = self.report.head_bone
        if head is not None and head in armature_obj.data.bones:
            rest = np.array(armature_obj.data.bones[head].matrix_local, dtype=np.float64)
            self.face_local = bone_maps.face_local_offsets(
                rest,
                _rest_point(armature_obj, self.report.joints.get(L_SHOULDER)),
                _rest_point(armature_obj, self.report.joints.get(R_SHOULDER)),
                self.report.face_offsets,
            )

    def _depsgraph(self, scene: Any) -> Any:
        if bpy.context.scene == scene:
            return bpy.context.evaluated_depsgraph_get()
        return scene.view_layers[0].depsgraph

    def world_points(self, depsgraph: Any) -> tuple[np.ndarray, np.ndarray, dict]:
        """(18, 3) world points, (18,) confidence before projection, extra points ({"center": ...})."""
        arm = self.armature.evaluated_get(depsgraph)
        mw = np.array(arm.matrix_world, dtype=np.float64)
        pts = np.zeros((NUM_KEYPOINTS, 3))
        conf = np.zeros(NUM_KEYPOINTS, np.float32)
        bones = arm.pose.bones
        for idx, ref in self.report.joints.items():
            if ref.kind == "object":
                obj = bpy.data.objects.get(ref.name)
                if obj is None:
                    continue
                pts[idx] = np.array(obj.evaluated_get(depsgraph).matrix_world.translation)
                conf[idx] = 1.0
                continue
            pb = bones.get(ref.name)
            if pb is None:
                continue
            local = np.array(pb.tail if ref.end == "tail" else pb.head, dtype=np.float64)
            pts[idx] = mw[:3, :3] @ local + mw[:3, 3]
            conf[idx] = 1.0
        extra = {}
        head = self.report.head_bone
        if self.face_local and head is not None and bones.get(head) is not None:
            m = mw @ np.array(bones[head].matrix, dtype=np.float64)
            for k, v in self.face_local.items():
                p = (m @ v)[:3]
                if k == "center":
                    extra["center"] = p
                elif k in self.report.estimated:
                    pts[k] = p
                    conf[k] = ESTIMATED_CONFIDENCE
        return pts, conf, extra

    def pose(self, scene: Any, camera_obj: Any, frame: float | None, width: int | None = None,
             height: int | None = None) -> Pose:  # fmt: skip
        if frame is not None:
            f = int(np.floor(frame))
            scene.frame_set(f, subframe=float(frame) - f)
        depsgraph = self._depsgraph(scene)
        cam = camera_params(scene, camera_obj, width, height, depsgraph)
        w, h = cam.render_size
        pts, conf, extra = self.world_points(depsgraph)
        proj = project_points(cam, pts)
        kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        kp[:, :2] = proj.pixels
        present = conf > 0
        visible = present & proj.visible
        kp[:, 2] = np.where(visible, conf, 0.0)
        behind = ~proj.in_front | ~present
        kp[behind, :2] = 0.0
        depth = np.where(present, proj.depth, 0.0).astype(np.float32)

        if self.hide_occluded_face and "center" in extra:
            face = {k: pts[k] for k in FACE_KEYPOINTS if present[k]}
            vis = bone_maps.face_visibility(
                face, extra["center"], cam.location, cam.view_direction if cam.type == "ORTHO" else None
            )
            for k, ok in vis.items():
                if not ok:
                    kp[k, 2] = 0.0
        # Neck = midpoint of the shoulders in the image (DWPose), present only when both are.
        if NECK in self.report.computed:
            a, b = R_SHOULDER, L_SHOULDER
            kp[NECK, :2] = (kp[a, :2] + kp[b, :2]) / 2 if present[a] and present[b] else 0.0
            kp[NECK, 2] = 1.0 if kp[a, 2] > 0 and kp[b, 2] > 0 else 0.0
            depth[NECK] = (depth[a] + depth[b]) / 2
        return Pose(kp, w, h, depth)


def armature_pose(scene: Any, armature_obj: Any, camera_obj: Any, frame: float | None, width: int | None,
                  height: int | None, bone_map: Any = None, *, hide_occluded_face: bool = True) -> Pose:  # fmt: skip
    """The OpenPose keypoints of `armature_obj` at `frame` (None: the current frame) seen by `camera_obj`
    (None: the scene camera) on a width x height canvas (None: the scene's render size).

    Confidence 0 marks keypoints behind the camera, outside the frame, without a bone, or (face points)
    hidden by the head itself; `pose.depth` holds the camera depth of every keypoint.
    """
    camera_obj = camera_obj or scene.camera
    if camera_obj is None:
        raise ValueError("the scene has no camera; add one and set it as the scene camera")
    return SkeletonReader(armature_obj, bone_map, hide_occluded_face).pose(
        scene, camera_obj, frame, width, height
    )


def export_skeleton_frames(
    scene: Any,
    armature_obj: Any,
    camera_obj: Any,
    frames: Iterable[float],
    out_dir: str | os.PathLike,
    width: int | None,
    height: int | None,
    *,
    bone_map: Any = None,
    write_png: bool = True,
    hide_occluded_face: bool = True,
    progress: Any = None,
) -> list[Pose]:
    """Write `pose/0000_keypoints.json ...` (standard OpenPose JSON, one per frame, numbered from 0 in the
    order of `frames`) and, with write_png, `skeleton/0000.png ...` under out_dir. The scene's current
    frame is restored afterwards. `progress(done, total)` is called after each frame."""
    camera_obj = camera_obj or scene.camera
    if camera_obj is None:
        raise ValueError("the scene has no camera; add one and set it as the scene camera")
    out = Path(out_dir)
    pose_dir, skel_dir = out / "pose", out / "skeleton"
    pose_dir.mkdir(parents=True, exist_ok=True)
    if write_png:
        skel_dir.mkdir(parents=True, exist_ok=True)
    reader = SkeletonReader(armature_obj, bone_map, hide_occluded_face)
    frames = list(frames)
    old_frame, old_sub = scene.frame_current, scene.frame_subframe
    poses: list[Pose] = []
    try:
        for i, f in enumerate(frames):
            pose = reader.pose(scene, camera_obj, f, width, height)
            write_pose_json(pose_dir / pose_file_name(i), pose)
            if write_png:
                save_pose_png(skel_dir / frame_name(i), pose)
            poses.append(pose)
            if progress is not None:
                progress(i + 1, len(frames))
    finally:
        scene.frame_set(old_frame, subframe=old_sub)
    return poses


def bone_map_report_text(armature_obj: Any, bone_map: Any = None) -> str:
    """Human-readable mapping report (for the panel's "check mapping" and logs)."""
    return resolve_bone_map(armature_obj, bone_map).summary()


def set_bone_map_overrides(armature_obj: Any, overrides: dict) -> None:
    """Store per-keypoint overrides on the armature object (validated first)."""
    bone_maps.parse_overrides(overrides)
    armature_obj[OVERRIDE_PROPERTY] = json.dumps(overrides)


def bone_map_override(armature_obj: Any, key: str) -> str | None:
    """The armature's override of one keypoint (or "head"); None when it is automatic."""
    return bone_maps.override_value(_override_source(armature_obj), key)


def set_bone_map_override(armature_obj: Any, key: str, value: str | None) -> None:
    """Set one keypoint's override (None: automatic again) in the armature object's custom property. The
    object's property is written even when it ends up empty ("{}"): an override stored on the armature
    data would otherwise come back."""
    armature_obj[OVERRIDE_PROPERTY] = json.dumps(
        bone_maps.with_override(_override_source(armature_obj), key, value)
    )
