"""Retargeting in Blender: sample a source armature's motion frame by frame, let `core.retarget` pair the
bones by their role in the body and compute the target's pose, and key it into a new action on the
target armature.

The source can be any humanoid armature in the file (an imported BVH or FBX clip, a character with
its own action, the built-in procedural motions); the bone maps of both rigs (names, the hierarchy
guess, the user's Bone Map overrides) say which bone is which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bpy
import numpy as np

from ..core import retarget as core
from .skeleton import resolve_bone_map


def rig_of(armature_obj: Any) -> core.Rig:
    """The armature's rest pose and bone map, as the retargeting maths reads them."""
    bones = armature_obj.data.bones
    return core.make_rig(
        armature_obj.name,
        [b.name for b in bones],
        [b.parent.name if b.parent else None for b in bones],
        np.array([np.array(b.matrix_local, np.float64) for b in bones]),
        [b.length for b in bones],
        resolve_bone_map(armature_obj),
    )


def sample_motion(
    scene: Any, armature_obj: Any, frames: Sequence[int], rig: core.Rig
) -> list[core.SourceFrame]:
    """The armature's world matrix and pose matrices at each frame (evaluated: constraints, drivers and
    NLA included). The scene's current frame is restored afterwards."""
    old = scene.frame_current
    out = []
    try:
        for f in frames:
            scene.frame_set(int(f))
            ev = armature_obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
            pose = ev.pose.bones
            out.append(
                core.SourceFrame(
                    np.array(ev.matrix_world, np.float64),
                    np.array([np.array(pose[n].matrix, np.float64) for n in rig.names]),
                )
            )
    finally:
        scene.frame_set(old)
    return out


def _rotation_path(pb: Any) -> str:
    mode = pb.rotation_mode
    return (
        "rotation_quaternion"
        if mode == "QUATERNION"
        else "rotation_axis_angle"
        if mode == "AXIS_ANGLE"
        else "rotation_euler"
    )


def bake_retarget(
    source_obj: Any,
    target_obj: Any,
    frames: Sequence[int],
    *,
    scene: Any = None,
    action_name: str | None = None,
) -> Any:
    """Make `target_obj` move like `source_obj` over `frames` (the same frame numbers): a new action on
    the target with a rotation key per bone and frame (in each bone's own rotation mode) and location
    keys on the hips; returns the action. The target object itself stays where it is.

    Raises `core.RetargetError` (a FramePromptError naming the rig and the fix) for a rig that does not
    read as a humanoid."""
    scene = scene or bpy.context.scene
    frames = [int(f) for f in frames]
    source, target = rig_of(source_obj), rig_of(target_obj)
    sampled = sample_motion(scene, source_obj, frames, source)
    old = scene.frame_current
    scene.frame_set(frames[0] if frames else old)
    world = np.array(target_obj.matrix_world, np.float64)
    scene.frame_set(old)
    basis = core.retarget(source, sampled, target, world)
    hips = core.find_roles(target).hips
    quats = core.continuous_quaternions(basis[:, :, :3, :3])

    from mathutils import Matrix

    source_action = source_obj.animation_data.action if source_obj.animation_data else None
    name = action_name or f"{source_action.name if source_action else source_obj.name} ({target_obj.name})"
    ad = target_obj.animation_data or target_obj.animation_data_create()
    action = bpy.data.actions.new(name)
    ad.action = action
    bones = target_obj.pose.bones
    for i, bone_name in enumerate(target.names):
        pb = bones[bone_name]
        path = _rotation_path(pb)
        euler = None
        for k, f in enumerate(frames):
            pb.matrix_basis = Matrix(basis[k, i].tolist())
            if path == "rotation_quaternion":
                pb.rotation_quaternion = quats[k, i].tolist()
            elif path == "rotation_euler":  # each Euler nearest the one before, so keys never spin round
                euler = Matrix(basis[k, i, :3, :3].tolist()).to_euler(
                    pb.rotation_mode, *([euler] if euler else [])
                )
                pb.rotation_euler = euler
            pb.keyframe_insert(path, frame=f, group=bone_name)
            if i == hips:
                pb.keyframe_insert("location", frame=f, group=bone_name)
    scene.frame_set(scene.frame_current)
    return action
