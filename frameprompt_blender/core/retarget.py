"""Motion from one humanoid armature onto another: pure maths (numpy), no bpy.

The two rigs may differ in bone names, bone count, proportions, rest posture (T-pose or A-pose) and
bone rolls. Bones are paired by their role in the body, read from each rig's bone map
(`core.bone_maps`): the hips (the lowest bone all four limbs hang from), the spine up to the chest (where
the arms part), the neck and head, the collar and pelvis bones before the limbs, and for each limb its
upper, lower and end bone (upper arm, forearm, hand; thigh, shin, foot). Chains of different lengths
(a 1-bone BVH chest onto a 4-bone spine) are paired by their position along the chain.

Per frame and paired bone, the source bone's rotation away from its rest pose, measured in world space,
is turned into the target's body frame (so a rig facing +Y drives one facing -Y) and applied to the
target bone's own rest orientation: rolls and local axes never matter. Limb bones are then swung so the
limb segment (shoulder to elbow, elbow to wrist, hip to knee, knee to ankle) points exactly where the
source's does: that is what an OpenPose skeleton shows, and it absorbs a different rest posture. Bones
without a role (fingers, toes, twist and face bones) keep their rest pose relative to their parent.

The hips follow the source's hips scaled by leg length: heights are measured from the clip's floor
(the lowest point the source's body reaches in the clip), so a motion-capture clip whose rest pose
floats below the floor still stands the target on its feet; ground travel is measured from the first
frame, so the target starts where it stands.

The answer is each target bone's pose matrix (`PoseBone.matrix_basis`), for the default bone
inheritance (rotation and full scale inherited): the bpy side keys them (`blender.retarget`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bone_maps import BODY_KEYPOINTS, BoneMapReport, JointRef
from .errors import FramePromptError
from .keypoints import (
    KEYPOINT_NAMES,
    L_ANKLE,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    NUM_KEYPOINTS,
    R_ANKLE,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
)

# Limb segments: role -> (keypoint at the bone's start, keypoint the segment points to).
LIMB_SEGMENTS: dict[str, tuple[int, int]] = {
    "upper_arm.R": (R_SHOULDER, R_ELBOW),
    "forearm.R": (R_ELBOW, R_WRIST),
    "upper_arm.L": (L_SHOULDER, L_ELBOW),
    "forearm.L": (L_ELBOW, L_WRIST),
    "thigh.R": (R_HIP, R_KNEE),
    "shin.R": (R_KNEE, R_ANKLE),
    "thigh.L": (L_HIP, L_KNEE),
    "shin.L": (L_KNEE, L_ANKLE),
}
# End bones: role -> the keypoint at their head (rotation only, no segment to aim).
LIMB_ENDS: dict[str, int] = {"hand.R": R_WRIST, "hand.L": L_WRIST, "foot.R": R_ANKLE, "foot.L": L_ANKLE}


class RetargetError(FramePromptError, ValueError):
    """A rig that cannot take part in retargeting; the message names what is missing and the fix."""

    code = "retarget_error"


@dataclass(frozen=True)
class Rig:
    """One armature at rest: bone names, parent indices (-1: none), rest matrices in armature space
    (`Bone.matrix_local`, (n, 4, 4)), bone lengths, and its bone map."""

    name: str
    names: tuple[str, ...]
    parents: tuple[int, ...]
    rest: np.ndarray
    lengths: np.ndarray
    report: BoneMapReport

    @property
    def heads(self) -> np.ndarray:
        return self.rest[:, :3, 3]

    @property
    def tails(self) -> np.ndarray:
        return self.rest[:, :3, 3] + self.rest[:, :3, 1] * self.lengths[:, None]

    def index(self, name: str) -> int:
        return self.names.index(name)


def make_rig(
    name: str,
    names: Sequence[str],
    parents: Sequence[str | None],
    rest: np.ndarray,
    lengths: Sequence[float],
    report: BoneMapReport,
) -> Rig:
    """A `Rig` from bone rows as Blender gives them (parent by name)."""
    index = {n: i for i, n in enumerate(names)}
    return Rig(
        name,
        tuple(names),
        tuple(index[p] if p is not None and p in index else -1 for p in parents),
        np.asarray(rest, np.float64).reshape(-1, 4, 4),
        np.asarray(lengths, np.float64).reshape(-1),
        report,
    )


@dataclass(frozen=True)
class Roles:
    """Which bones of a rig play which part: role -> bones from the body's centre outwards."""

    hips: int
    chains: dict[str, tuple[int, ...]]


def _ancestors(rig: Rig, i: int) -> list[int]:
    """i, its parent, ... up to the root."""
    out = [i]
    while rig.parents[out[-1]] >= 0:
        out.append(rig.parents[out[-1]])
    return out


def _path(rig: Rig, top: int, bottom: int) -> tuple[int, ...] | None:
    """The bones strictly between `top` and its descendant `bottom`, top first (None: not a descendant)."""
    up = _ancestors(rig, bottom)
    if top not in up:
        return None
    return tuple(reversed(up[1 : up.index(top)]))


def _common_ancestor(rig: Rig, bones: Sequence[int]) -> int | None:
    common = set(_ancestors(rig, bones[0]))
    for b in bones[1:]:
        common &= set(_ancestors(rig, b))
    # the lowest one: the first of the first bone's ancestors that all share
    return next((a for a in _ancestors(rig, bones[0]) if a in common), None)


def _bone_of(rig: Rig, ref: JointRef | None) -> int | None:
    if ref is None or ref.kind == "object" or ref.name not in rig.names:
        return None
    return rig.index(ref.name)


def _segment_bone(rig: Rig, start: int, end: int) -> int | None:
    """The bone a limb segment starts with: the bone whose head is keypoint `start`, or, for a keypoint at
    a bone's tail, that bone's child on the way to keypoint `end`."""
    ref, ref_end = rig.report.joints.get(start), rig.report.joints.get(end)
    b, e = _bone_of(rig, ref), _bone_of(rig, ref_end)
    if b is None or e is None or ref is None:
        return None
    if ref.end == "head":
        return b if b in _ancestors(rig, e) else None
    between = _path(rig, b, e)
    if between is None:
        return None
    return between[0] if between else e


def find_roles(rig: Rig) -> Roles:
    """The body parts of a humanoid rig (its bone map must have the 12 body joints)."""
    if not rig.report.ok:
        missing = ", ".join(KEYPOINT_NAMES[i] for i in BODY_KEYPOINTS if i not in rig.report.joints)
        raise RetargetError(
            f"armature '{rig.name}' does not read as a humanoid (no bone for {missing}); map those "
            "keypoints in the FramePrompt panel's Bone Map before retargeting onto or from it"
        )
    chains: dict[str, tuple[int, ...]] = {}
    for role, (start, end) in LIMB_SEGMENTS.items():
        b = _segment_bone(rig, start, end)
        if b is not None:
            chains[role] = (b,)
    for role, k in LIMB_ENDS.items():
        ref = rig.report.joints.get(k)
        b = _bone_of(rig, ref)
        if b is not None and ref is not None and ref.end == "head":
            chains[role] = (b,)
    limbs = [chains[r][0] for r in ("upper_arm.R", "upper_arm.L", "thigh.R", "thigh.L") if r in chains]
    if len(limbs) < 4:
        raise RetargetError(
            f"armature '{rig.name}': the bone map's shoulders, elbows, hips and knees do not lie on "
            "bone chains (a keypoint mapped to an empty or to a bone outside its limb); fix them in the "
            "Bone Map"
        )
    hips = _common_ancestor(rig, limbs)
    if hips is None or hips in limbs:
        raise RetargetError(
            f"armature '{rig.name}': its arms and legs do not hang from one body (no common parent bone "
            "of both upper arms and both thighs); parent them to the spine and hips"
        )
    chest = _common_ancestor(rig, limbs[:2])
    assert chest is not None  # hips is a common ancestor of the two arms
    spine = _path(rig, hips, chest)
    chains["hips"] = (hips,)
    if chest != hips and spine is not None:
        chains["spine"] = (*spine, chest)
    for side in "RL":
        collar = _path(rig, chest, chains[f"upper_arm.{side}"][0])
        if collar:
            chains[f"collar.{side}"] = collar
        pelvis = _path(rig, hips, chains[f"thigh.{side}"][0])
        if pelvis:
            chains[f"pelvis.{side}"] = pelvis
    head = rig.report.head_bone
    if head is not None and head in rig.names:
        h = rig.index(head)
        neck = _path(rig, chest, h)
        if neck is not None:
            chains["head"] = (h,)
            if neck:
                chains["neck"] = neck
    return Roles(hips, chains)


def _rotation(m: np.ndarray) -> np.ndarray:
    """The rotation part of a 4x4 (or 3x3) matrix with scale: its columns made unit length."""
    r = np.asarray(m, np.float64)[..., :3, :3]
    return r / np.linalg.norm(r, axis=-2, keepdims=True)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else np.zeros(3)


def swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The shortest rotation taking direction a onto direction b (3x3)."""
    a, b = _unit(np.asarray(a, np.float64)), _unit(np.asarray(b, np.float64))
    axis = np.cross(a, b)
    s, c = float(np.linalg.norm(axis)), float(np.dot(a, b))
    if s < 1e-9:
        if c > 0:
            return np.eye(3)
        # opposite: half a turn about any axis perpendicular to a
        helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        axis = _unit(np.cross(a, helper))
        return 2 * np.outer(axis, axis) - np.eye(3)
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    angle = math.atan2(s, c)
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def keypoint_positions(rig: Rig, pose: np.ndarray, keypoints: Sequence[int]) -> dict[int, np.ndarray]:
    """Armature-space positions of mapped keypoints (bone heads or tails) from pose matrices (n, 4, 4)."""
    out = {}
    for k in keypoints:
        ref = rig.report.joints.get(k)
        b = _bone_of(rig, ref)
        if b is None or ref is None:
            continue
        m = pose[b]
        out[k] = m[:3, 3] + (m[:3, 1] * rig.lengths[b] if ref.end == "tail" else 0.0)
    return out


def body_frame(rig: Rig, pose: np.ndarray, world: np.ndarray) -> np.ndarray:
    """The body's axes in world space as columns (left, up, forward): left from the right to the left
    shoulders and hips, up from the hips' midpoint to the shoulders' midpoint; forward = left x up."""
    kp = keypoint_positions(rig, pose, (R_SHOULDER, L_SHOULDER, R_HIP, L_HIP))
    w = np.asarray(world, np.float64)
    p = {k: w[:3, :3] @ v + w[:3, 3] for k, v in kp.items()}
    left = _unit(p[L_SHOULDER] - p[R_SHOULDER] + p[L_HIP] - p[R_HIP])
    up = (p[L_SHOULDER] + p[R_SHOULDER]) / 2 - (p[L_HIP] + p[R_HIP]) / 2
    up = _unit(up - np.dot(up, left) * left)
    if not left.any() or not up.any():
        raise RetargetError(
            f"armature '{rig.name}': its shoulders or hips sit on one point at rest, so the body's "
            "left and up cannot be told; check the Bone Map"
        )
    return np.stack([left, up, np.cross(left, up)], axis=1)


def topological_order(parents: Sequence[int]) -> list[int]:
    """Bone indices with every parent before its children."""
    depth = []
    for i in range(len(parents)):
        d, p = 0, parents[i]
        while p >= 0:
            d, p = d + 1, parents[p]
        depth.append(d)
    return sorted(range(len(parents)), key=lambda i: depth[i])


def _relative_rest(rig: Rig) -> np.ndarray:
    """Each bone's rest matrix relative to its parent's (the armature space for roots)."""
    rel = rig.rest.copy()
    for i, p in enumerate(rig.parents):
        if p >= 0:
            rel[i] = np.linalg.inv(rig.rest[p]) @ rig.rest[i]
    return rel


def forward_kinematics(rig: Rig, basis: np.ndarray) -> np.ndarray:
    """Pose matrices in armature space (`PoseBone.matrix`) from pose bone matrices (`matrix_basis`),
    (n, 4, 4) each, for the default inheritance."""
    rel = _relative_rest(rig)
    out = np.empty_like(rig.rest)
    for i in topological_order(rig.parents):
        p = rig.parents[i]
        out[i] = (out[p] if p >= 0 else np.eye(4)) @ rel[i] @ basis[i]
    return out


def _subtree(rig: Rig, top: int) -> list[int]:
    return [i for i in range(len(rig.names)) if top in _ancestors(rig, i)]


def _lowest(rig: Rig, pose: np.ndarray, world: np.ndarray, bones: Sequence[int], up: np.ndarray) -> float:
    w = np.asarray(world, np.float64)
    heads = pose[bones, :3, 3]
    tails = heads + pose[bones, :3, 1] * rig.lengths[list(bones), None]
    pts = np.concatenate([heads, tails]) @ w[:3, :3].T + w[:3, 3]
    return float((pts @ up).min())


@dataclass(frozen=True)
class SourceFrame:
    """One frame of the source: its object's world matrix and its pose matrices (n, 4, 4)."""

    world: np.ndarray
    pose: np.ndarray


def pair_chains(target: Roles, source: Roles) -> dict[int, int]:
    """Target bone -> source bone, role by role; chains of different lengths pair by position along the
    chain, the last bones (nearest the limb or the head) always together."""
    pairs: dict[int, int] = {}
    for role, bones in target.chains.items():
        src = source.chains.get(role)
        if not src:
            continue
        m, n = len(bones), len(src)
        for i, b in enumerate(bones):
            pairs[b] = src[math.ceil((i + 1) * n / m) - 1]
    return pairs


def retarget(source: Rig, frames: Sequence[SourceFrame], target: Rig, target_world: np.ndarray) -> np.ndarray:
    """The target's pose bone matrices (`matrix_basis`, (frames, bones, 4, 4)) that make it move like the
    source over `frames`. `target_world`: the target object's world matrix (it stays in place)."""
    if not frames:
        raise RetargetError(f"the clip from '{source.name}' has no frames to retarget")
    src_roles, tgt_roles = find_roles(source), find_roles(target)
    pairs = pair_chains(tgt_roles, src_roles)
    aim = {
        tgt_roles.chains[role][0]: segment
        for role, segment in LIMB_SEGMENTS.items()
        if role in tgt_roles.chains and role in src_roles.chains
    }

    w_t = np.asarray(target_world, np.float64)
    r_wt = _rotation(w_t)
    w_s0 = np.asarray(frames[0].world, np.float64)
    frame_s = body_frame(source, source.rest, w_s0)
    frame_t = body_frame(target, target.rest, w_t)
    turn = frame_t @ frame_s.T  # source world -> target world, body axes onto body axes
    up_s, up_t = frame_s[:, 1], frame_t[:, 1]

    # heights from each rig's floor, scaled by the hips' height above the feet at rest
    body_s, body_t = _subtree(source, src_roles.hips), _subtree(target, tgt_roles.hips)
    hips_s, hips_t = src_roles.hips, tgt_roles.hips

    def hips_world(rig: Rig, pose: np.ndarray, world: np.ndarray, i: int) -> np.ndarray:
        return world[:3, :3] @ pose[i, :3, 3] + world[:3, 3]

    leg_s = float(hips_world(source, source.rest, w_s0, hips_s) @ up_s) - _lowest(
        source, source.rest, w_s0, body_s, up_s
    )
    floor_t = _lowest(target, target.rest, w_t, body_t, up_t)
    leg_t = float(hips_world(target, target.rest, w_t, hips_t) @ up_t) - floor_t
    if leg_s <= 1e-9 or leg_t <= 1e-9:
        raise RetargetError(
            f"the hips of '{source.name if leg_s <= 1e-9 else target.name}' are not above its feet at "
            "rest; retargeting needs a standing rest pose"
        )
    scale = leg_t / leg_s
    floor_s = min(_lowest(source, f.pose, np.asarray(f.world, np.float64), body_s, up_s) for f in frames)
    start_s = hips_world(source, frames[0].pose, w_s0, hips_s)
    rest_t = hips_world(target, target.rest, w_t, hips_t)
    ground_t = rest_t - np.dot(rest_t, up_t) * up_t

    rel = _relative_rest(target)
    order = topological_order(target.parents)
    rest_rot_s = _rotation(w_s0) @ _rotation(source.rest)
    rest_rot_t = r_wt @ _rotation(target.rest)
    tgt_rest_kp = keypoint_positions(target, target.rest, range(NUM_KEYPOINTS))
    out = np.empty((len(frames), len(target.names), 4, 4))
    for fi, frame in enumerate(frames):
        w_s = np.asarray(frame.world, np.float64)
        pose_rot_s = _rotation(w_s) @ _rotation(frame.pose)
        src_kp = keypoint_positions(source, frame.pose, range(NUM_KEYPOINTS))
        src_kp = {k: w_s[:3, :3] @ v for k, v in src_kp.items()}  # directions only: no translation
        hips_now = hips_world(source, frame.pose, w_s, hips_s)
        travel = hips_now - start_s
        travel -= np.dot(travel, up_s) * up_s
        height = float(hips_now @ up_s) - floor_s
        hips_target = ground_t + turn @ (scale * travel) + up_t * (floor_t + scale * height)

        posed = np.empty_like(target.rest)
        for i in order:
            p = target.parents[i]
            follow = (posed[p] if p >= 0 else np.eye(4)) @ rel[i]
            m = follow.copy()
            if i in pairs:
                j = pairs[i]
                delta = turn @ (pose_rot_s[j] @ rest_rot_s[j].T) @ turn.T
                world_rot = delta @ rest_rot_t[i]
                if i in aim:
                    a, b = aim[i]
                    rest_dir = r_wt @ (tgt_rest_kp[b] - tgt_rest_kp[a])
                    world_rot = swing(delta @ rest_dir, turn @ (src_kp[b] - src_kp[a])) @ world_rot
                m[:3, :3] = r_wt.T @ world_rot
            if i == hips_t:
                m[:3, 3] = np.linalg.solve(w_t[:3, :3], hips_target - w_t[:3, 3])
            posed[i] = m
            out[fi, i] = np.linalg.inv(follow) @ m
    return out


def continuous_quaternions(rotations: np.ndarray) -> np.ndarray:
    """Unit quaternions (w, x, y, z) of rotation matrices (..., 3, 3) along the first axis, each one's
    sign chosen nearest the previous so keys interpolate the short way."""
    r = np.asarray(rotations, np.float64)
    q = np.empty((*r.shape[:-2], 4))
    flat_r, flat_q = r.reshape(-1, 3, 3), q.reshape(-1, 4)
    for k, m in enumerate(flat_r):
        t = np.trace(m)
        if t > 0:
            s = 2 * math.sqrt(t + 1)
            flat_q[k] = (s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s)
        else:
            i = int(np.argmax(np.diag(m)))
            j, n = (i + 1) % 3, (i + 2) % 3
            s = 2 * math.sqrt(max(1e-12, 1 + m[i, i] - m[j, j] - m[n, n]))
            v = np.empty(4)
            v[0] = (m[n, j] - m[j, n]) / s
            v[1 + i] = s / 4
            v[1 + j] = (m[j, i] + m[i, j]) / s
            v[1 + n] = (m[n, i] + m[i, n]) / s
            flat_q[k] = v
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    for f in range(1, q.shape[0]):
        flip = np.sum(q[f] * q[f - 1], axis=-1) < 0
        q[f][flip] *= -1
    return q
