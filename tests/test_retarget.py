"""Retargeting maths (core.retarget) without Blender: a classic motion-capture skeleton in a T-pose drives
a Mixamo-named rig with other proportions, an A-pose, more spine bones, fingers and random bone rolls,
facing the other way. The target's limbs must point where the source's do."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_bone_guess import bones_of, classic

from frameprompt_blender.core import bone_maps as B
from frameprompt_blender.core import retarget as R
from frameprompt_blender.core.keypoints import (
    L_ANKLE,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    R_ANKLE,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
)

SEGMENTS = [(R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST),
            (R_HIP, R_KNEE), (R_KNEE, R_ANKLE), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE)]  # fmt: skip


def rotation(axis, angle: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def rig_of(name: str, rows: list[B.RestBone], rng: np.random.Generator) -> R.Rig:
    """A Rig from rest heads and tails, each bone with a random roll (its local x/z axes about its y)."""
    rest, lengths = [], []
    for b in rows:
        y = np.subtract(b.tail, b.head)
        lengths.append(float(np.linalg.norm(y)))
        y = y / lengths[-1]
        helper = np.array([0.0, 0.0, 1.0]) if abs(y[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        x = np.cross(y, helper)
        x /= np.linalg.norm(x)
        m = np.eye(4)
        m[:3, :3] = rotation(y, rng.uniform(-math.pi, math.pi)) @ np.stack([x, y, np.cross(x, y)], axis=1)
        m[:3, 3] = b.head
        rest.append(m)
    report = B.detect_bone_map(rows)
    assert report.ok, report.summary()
    return R.make_rig(name, [b.name for b in rows], [b.parent for b in rows], np.array(rest), lengths, report)


def mixamo_rows() -> list[B.RestBone]:
    """A Mixamo-named character: 1.2 times taller, long legs, short arms in an A-pose (40 degrees down),
    three spine bones, clavicles, two-bone fingers on each hand, toes."""
    rows = [B.RestBone("mixamorig:Hips", None, (0, 0, 1.15), (0, 0, 1.25))]
    spine = [(1.25, 1.38), (1.38, 1.5), (1.5, 1.62)]
    parent = "mixamorig:Hips"
    for k, (a, b) in enumerate(spine):
        name = "mixamorig:Spine" + ("" if k == 0 else str(k))
        rows.append(B.RestBone(name, parent, (0, 0, a), (0, 0, b)))
        parent = name
    rows.append(B.RestBone("mixamorig:Neck", parent, (0, 0, 1.62), (0, -0.01, 1.72)))
    rows.append(B.RestBone("mixamorig:Head", "mixamorig:Neck", (0, -0.01, 1.72), (0, -0.01, 1.95)))
    c, s = math.cos(math.radians(40)), math.sin(math.radians(40))
    for side, sx in (("Left", 1.0), ("Right", -1.0)):

        def p(x, z, sx=sx):
            return (sx * x, 0.0, z)

        sh = (0.19, 1.58)
        el = (sh[0] + 0.25 * c, sh[1] - 0.25 * s)
        wr = (el[0] + 0.23 * c, el[1] - 0.23 * s)
        tip = (wr[0] + 0.08 * c, wr[1] - 0.08 * s)
        rows += [
            B.RestBone(f"mixamorig:{side}Shoulder", parent, p(0.04, 1.58), p(*sh)),
            B.RestBone(f"mixamorig:{side}Arm", f"mixamorig:{side}Shoulder", p(*sh), p(*el)),
            B.RestBone(f"mixamorig:{side}ForeArm", f"mixamorig:{side}Arm", p(*el), p(*wr)),
            B.RestBone(f"mixamorig:{side}Hand", f"mixamorig:{side}ForeArm", p(*wr), p(*tip)),
        ]
        for f, dy in (("Index", -0.02), ("Pinky", 0.02)):
            base = (sx * tip[0], dy, tip[1])
            end = (sx * (tip[0] + 0.05 * c), dy, tip[1] - 0.05 * s)
            rows.append(B.RestBone(f"mixamorig:{side}Hand{f}1", f"mixamorig:{side}Hand", base, end))
        rows += [
            B.RestBone(f"mixamorig:{side}UpLeg", "mixamorig:Hips", p(0.1, 1.12), p(0.1, 0.6)),
            B.RestBone(f"mixamorig:{side}Leg", f"mixamorig:{side}UpLeg", p(0.1, 0.6), p(0.1, 0.1)),
            B.RestBone(f"mixamorig:{side}Foot", f"mixamorig:{side}Leg", p(0.1, 0.1), (sx * 0.1, -0.12, 0.03)),
            B.RestBone(f"mixamorig:{side}ToeBase", f"mixamorig:{side}Foot", (sx * 0.1, -0.12, 0.03),
                       (sx * 0.1, -0.2, 0.0)),
        ]  # fmt: skip
    return rows


def source_frames(rig: R.Rig, world: np.ndarray, count: int, rng: np.random.Generator):
    """Random bends at the shoulders, elbows, hips, knees, chest and neck, the hips walking and bobbing."""
    moving = ["LeftShoulder", "RightShoulder", "LeftElbow", "RightElbow", "LeftHip", "RightHip", "LeftKnee",
              "RightKnee", "Chest", "Neck", "Hips", "LeftWrist"]  # fmt: skip
    frames = []
    for f in range(count):
        basis = np.tile(np.eye(4), (len(rig.names), 1, 1))
        for name in moving:
            basis[rig.index(name), :3, :3] = rotation(rng.normal(size=3), rng.uniform(0.2, 1.2))
        basis[rig.index("Hips"), :3, 3] = (0.05 * f, 0.1 * f, 0.03 * math.sin(f))
        frames.append(R.SourceFrame(world, R.forward_kinematics(rig, basis)))
    return frames


def world_points(rig: R.Rig, pose: np.ndarray, world: np.ndarray) -> dict[int, np.ndarray]:
    kp = R.keypoint_positions(rig, pose, range(18))
    return {k: world[:3, :3] @ v + world[:3, 3] for k, v in kp.items()}


def angle(a: np.ndarray, b: np.ndarray) -> float:
    c = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(np.clip(c, -1, 1)))


@pytest.fixture
def rigs():
    rng = np.random.default_rng(3)
    source = rig_of("mocap", bones_of(classic()), rng)
    target = rig_of("hero", mixamo_rows(), rng)
    return source, target, rng


def test_roles_pair_bones_by_their_part_in_the_body(rigs):
    source, target, _ = rigs
    src, tgt = R.find_roles(source), R.find_roles(target)
    name = {r: tuple(target.names[i] for i in bones) for r, bones in tgt.chains.items()}
    assert name["hips"] == ("mixamorig:Hips",)
    assert name["spine"] == ("mixamorig:Spine", "mixamorig:Spine1", "mixamorig:Spine2")
    assert name["neck"] == ("mixamorig:Neck",) and name["head"] == ("mixamorig:Head",)
    assert name["collar.L"] == ("mixamorig:LeftShoulder",) and name["upper_arm.L"] == ("mixamorig:LeftArm",)
    assert name["forearm.R"] == ("mixamorig:RightForeArm",) and name["hand.R"] == ("mixamorig:RightHand",)
    assert name["thigh.L"] == ("mixamorig:LeftUpLeg",) and name["foot.L"] == ("mixamorig:LeftFoot",)
    assert {source.names[i] for i in src.chains["spine"]} == {"Chest"}
    pairs = {target.names[t]: source.names[s] for t, s in R.pair_chains(tgt, src).items()}
    # three spine bones onto one chest; the collar bones meet (Mixamo's "Shoulder" is the collar)
    assert [pairs[f"mixamorig:Spine{k}"] for k in ("", "1", "2")] == ["Chest"] * 3
    assert pairs["mixamorig:LeftShoulder"] == "LeftCollar" and pairs["mixamorig:LeftArm"] == "LeftShoulder"
    assert "mixamorig:LeftHandIndex1" not in pairs and "mixamorig:LeftToeBase" not in pairs


@pytest.mark.parametrize("facing", ["same way", "turned round"])
def test_limbs_point_where_the_source_limbs_point(rigs, facing):
    source, target, rng = rigs
    w_s = np.eye(4)
    w_t = np.eye(4)
    w_t[:3, 3] = (2.0, 1.0, 0.0)
    if facing == "turned round":
        w_t[:3, :3] = rotation((0, 0, 1), math.pi)
    frames = source_frames(source, w_s, 6, rng)
    basis = R.retarget(source, frames, target, w_t)
    assert basis.shape == (6, len(target.names), 4, 4)
    turn = R.body_frame(target, target.rest, w_t) @ R.body_frame(source, source.rest, w_s).T
    worst = 0.0
    for f, frame in enumerate(frames):
        src = world_points(source, frame.pose, w_s)
        tgt = world_points(target, R.forward_kinematics(target, basis[f]), w_t)
        for a, b in SEGMENTS:
            worst = max(worst, angle(turn @ (src[b] - src[a]), tgt[b] - tgt[a]))
    assert worst < 0.5, worst
    # the bones without a partner (fingers, toes) keep their rest pose relative to their parent
    finger = target.index("mixamorig:LeftHandIndex1")
    np.testing.assert_allclose(basis[:, finger], np.tile(np.eye(4), (6, 1, 1)), atol=1e-9)


def test_the_hips_travel_and_bob_scaled_by_leg_length(rigs):
    source, target, rng = rigs
    w = np.eye(4)
    frames = source_frames(source, w, 5, rng)
    basis = R.retarget(source, frames, target, w)
    hips_s, hips_t = source.index("Hips"), target.index("mixamorig:Hips")
    src = np.array([fr.pose[hips_s, :3, 3] for fr in frames])
    tgt = np.array([R.forward_kinematics(target, b)[hips_t, :3, 3] for b in basis])
    # leg length: the hips' height above the lowest point at rest (classic 1.0 m, this rig 1.15 m)
    scale = 1.15 / 1.0
    np.testing.assert_allclose(tgt[:, :2] - tgt[0, :2], scale * (src[:, :2] - src[0, :2]), atol=1e-9)
    floor_s = min(
        min(
            fr.pose[:, 2, 3].min(),
            (fr.pose[:, :3, 3] + fr.pose[:, :3, 1] * source.lengths[:, None])[:, 2].min(),
        )
        for fr in frames
    )
    np.testing.assert_allclose(tgt[:, 2], 0.0 + scale * (src[:, 2] - floor_s), atol=1e-9)


def test_the_same_rig_gets_the_same_pose_back(rigs):
    source, _, rng = rigs
    frames = source_frames(source, np.eye(4), 3, rng)
    basis = R.retarget(source, frames, source, np.eye(4))
    for f, frame in enumerate(frames):
        posed = R.forward_kinematics(source, basis[f])
        # rotations of every bone the clip moves and positions up to the floor offset
        np.testing.assert_allclose(posed[:, :3, :3], frame.pose[:, :3, :3], atol=1e-6)


def test_a_rig_that_is_not_a_humanoid_is_refused():
    rows = bones_of(classic())
    legless = [b for b in rows if not any(s in b.name for s in ("Hip", "Knee", "Ankle"))]
    report = B.detect_bone_map(legless)
    rest = np.tile(np.eye(4), (len(legless), 1, 1))
    rig = R.make_rig("Torso", [b.name for b in legless], [b.parent for b in legless], rest,
                     [0.1] * len(legless), report)  # fmt: skip
    with pytest.raises(
        R.RetargetError, match=r"armature 'Torso' does not read as a humanoid \(no bone for RHip"
    ):
        R.find_roles(rig)


def test_quaternions_take_the_short_way():
    rots = np.stack([rotation((0, 0, 1), a) for a in np.linspace(0, 1.9 * math.pi, 12)])
    q = R.continuous_quaternions(rots)
    assert (np.sum(q[1:] * q[:-1], axis=1) > 0).all()
    # each one is the rotation it came from
    for m, (w, x, y, z) in zip(rots, q, strict=True):
        v = np.array([x, y, z])
        back = (
            (w * w - v @ v) * np.eye(3)
            + 2 * np.outer(v, v)
            + 2 * w * np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
        )
        np.testing.assert_allclose(back, m, atol=1e-9)
