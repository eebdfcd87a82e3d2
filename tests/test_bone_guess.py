"""The hierarchy guess (core.bone_maps.guess_from_hierarchy / detect_bone_map): a humanoid found from
parents and rest positions alone, with bone names that mean nothing. Pure, no bpy."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from frameprompt_blender.core import bone_maps as B
from frameprompt_blender.core.keypoints import (
    KEYPOINT_NAMES,
    L_SHOULDER,
    L_WRIST,
    NECK,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
)

# A joint tree as (name, head, children, end site), Blender's axes (Z up, the character facing -Y, its
# left at +X), metres. Bones are made from it as Blender's BVH importer makes them: one bone per joint,
# its tail at its only child, at the mean of several children, or at its end site.
Joint = tuple[str, tuple[float, float, float], list, tuple[float, float, float] | None]


def bones_of(root: Joint, rotation: np.ndarray | None = None, scale: float = 1.0) -> list[B.RestBone]:
    out: list[B.RestBone] = []
    rot = np.eye(3) if rotation is None else rotation

    def place(p) -> tuple[float, float, float]:
        return tuple(float(v) for v in rot @ (np.asarray(p, float) * scale))  # type: ignore[return-value]

    def visit(node: Joint, parent: str | None) -> None:
        name, head, kids, end = node
        tail = np.mean([k[1] for k in kids], axis=0) if kids else end
        out.append(B.RestBone(name, parent, place(head), place(tail)))
        for k in kids:
            visit(k, name)

    visit(root, None)
    return out


def anonymous(bones: list[B.RestBone], seed: int = 0) -> tuple[list[B.RestBone], dict[str, str]]:
    """The same rig with names bone_000 ... in a shuffled order; returns (bones, new name -> old name)."""
    order = list(range(len(bones)))
    random.Random(seed).shuffle(order)
    new = {bones[i].name: f"bone_{k:03d}" for k, i in enumerate(order)}
    renamed = [B.RestBone(new[b.name], new.get(b.parent or ""), b.head, b.tail) for b in bones]
    return [renamed[i] for i in order], {v: k for k, v in new.items()}


def _side(x: float, node: Joint) -> Joint:
    """Mirror a left-side joint tree (+X) to the right (-X); names: Left->Right, _l->_r, LThumb->RThumb."""
    name, head, kids, end = node

    def flip(p):
        return None if p is None else (-p[0], p[1], p[2])

    if x > 0:
        return node
    renamed = re.sub(r"^L(?=[A-Z])", "R", name.replace("Left", "Right").replace("_l", "_r"))
    return (renamed, flip(head), [_side(x, k) for k in kids], flip(end))


def classic() -> Joint:
    """A classic motion-capture skeleton (Hips, Chest, LeftCollar, LeftShoulder, ... no fingers, no toes
    bone: the ankle's end site is the toe), T-pose."""
    arm: Joint = (
        "LeftCollar",
        (0.03, 0.0, 1.45),
        [
            (
                "LeftShoulder",
                (0.18, 0.0, 1.45),
                [
                    (
                        "LeftElbow",
                        (0.47, 0.0, 1.45),
                        [("LeftWrist", (0.74, 0.0, 1.45), [], (0.92, 0.0, 1.45))],
                        None,
                    )
                ],
                None,
            )
        ],
        None,
    )
    leg: Joint = (
        "LeftHip",
        (0.1, 0.0, 0.95),
        [("LeftKnee", (0.1, 0.0, 0.52), [("LeftAnkle", (0.1, 0.0, 0.08), [], (0.1, -0.15, 0.0))], None)],
        None,
    )
    return ("Hips", (0.0, 0.0, 1.0), [
        ("Chest", (0.0, 0.0, 1.25), [
            ("Neck", (0.0, 0.0, 1.5), [("Head", (0.0, 0.0, 1.6), [], (0.0, 0.0, 1.8))], None),
            arm, _side(-1, arm)], None),
        leg, _side(-1, leg)], None)  # fmt: skip


def game_rig() -> Joint:
    """An Unreal-style rig: a root on the floor with IK bones (one reaching hand height), twist bones as
    side children, five three-bone fingers, a ball-of-foot bone; arms in an A-pose."""
    c, s = np.cos(np.radians(40)), np.sin(np.radians(40))

    def along(start, d):  # a point d metres down the A-pose arm from `start`
        return (start[0] + d * c, start[1], start[2] - d * s)

    sh = (0.17, 0.0, 1.43)
    el, wr = along(sh, 0.28), along(sh, 0.28 + 0.26)
    fingers = []
    for k, dy in enumerate((-0.04, -0.02, 0.0, 0.02, 0.04)):
        base = along(wr, 0.09)
        base = (base[0], dy, base[2])
        f1, f2 = along(base, 0.04), along(base, 0.07)
        fingers.append((f"finger{k}_01_l", base, [(f"finger{k}_02_l", f1, [(f"finger{k}_03_l", f2, [],
                        along(base, 0.09))], None)], None))  # fmt: skip
    arm: Joint = (
        "clavicle_l",
        (0.03, 0.0, 1.46),
        [
            (
                "upperarm_l",
                sh,
                [
                    (
                        "lowerarm_l",
                        el,
                        [
                            ("hand_l", wr, fingers, None),
                            ("lowerarm_twist_01_l", along(el, 0.18), [], along(el, 0.22)),
                        ],
                        None,
                    ),
                    ("upperarm_twist_01_l", along(sh, 0.05), [], along(sh, 0.09)),
                ],
                None,
            )
        ],
        None,
    )
    leg: Joint = (
        "thigh_l",
        (0.09, 0.0, 0.93),
        [
            (
                "calf_l",
                (0.09, 0.01, 0.5),
                [
                    (
                        "foot_l",
                        (0.09, 0.03, 0.08),
                        [("ball_l", (0.09, -0.1, 0.02), [], (0.09, -0.17, 0.02))],
                        None,
                    ),
                    ("calf_twist_01_l", (0.09, 0.02, 0.3), [], (0.09, 0.02, 0.25)),
                ],
                None,
            ),
            ("thigh_twist_01_l", (0.09, 0.0, 0.8), [], (0.09, 0.0, 0.75)),
        ],
        None,
    )
    spine: Joint = (
        "spine_01",
        (0.0, 0.0, 1.05),
        [
            (
                "spine_02",
                (0.0, 0.0, 1.17),
                [
                    (
                        "spine_03",
                        (0.0, 0.0, 1.3),
                        [
                            (
                                "neck_01",
                                (0.0, 0.0, 1.5),
                                [("head", (0.0, -0.01, 1.6), [], (0.0, -0.01, 1.8))],
                                None,
                            ),
                            arm,
                            _side(-1, arm),
                        ],
                        None,
                    )
                ],
                None,
            )
        ],
        None,
    )
    ik_hands: Joint = (
        "ik_hand_root",
        (0.0, 0.0, 0.0),
        [
            (
                "ik_hand_gun",
                (-0.6, 0.0, 1.0),
                [
                    ("ik_hand_r", (-0.6, 0.0, 1.0), [], (-0.6, 0.0, 1.05)),
                    ("ik_hand_l", (0.6, 0.0, 1.0), [], (0.6, 0.0, 1.05)),
                ],
                None,
            )
        ],
        None,
    )
    ik_feet: Joint = (
        "ik_foot_root",
        (0.0, 0.0, 0.0),
        [
            ("ik_foot_r", (-0.09, 0.03, 0.08), [], (-0.09, -0.1, 0.08)),
            ("ik_foot_l", (0.09, 0.03, 0.08), [], (0.09, -0.1, 0.08)),
        ],
        None,
    )
    return ("root", (0.0, 0.0, 0.0), [
        ("pelvis", (0.0, 0.0, 0.95), [spine, leg, _side(-1, leg)], None), ik_feet, ik_hands], None)  # fmt: skip


def hanging() -> Joint:
    """Classic names, the arms hanging down at the sides, the feet ending straight down (no toes)."""
    arm: Joint = (
        "LeftCollar",
        (0.02, 0.02, 1.42),
        [
            (
                "LeftShoulder",
                (0.2, 0.02, 1.42),
                [
                    (
                        "LeftElbow",
                        (0.21, 0.02, 1.13),
                        [("LeftWrist", (0.21, 0.02, 0.88), [], (0.21, 0.02, 0.7))],
                        None,
                    )
                ],
                None,
            )
        ],
        None,
    )
    leg: Joint = (
        "LeftHip",
        (0.11, 0.0, 0.93),
        [("LeftKnee", (0.11, 0.0, 0.5), [("LeftAnkle", (0.11, 0.0, 0.08), [], (0.11, 0.0, 0.0))], None)],
        None,
    )
    return ("Hips", (0.0, 0.0, 0.95), [leg, _side(-1, leg), ("Chest", (0.0, 0.0, 1.05), [
        ("Chest2", (0.0, 0.0, 1.2), [arm, _side(-1, arm), ("Neck", (0.0, 0.0, 1.45), [
            ("Head", (0.0, 0.0, 1.57), [], (0.0, 0.0, 1.77))], None)], None)], None)], None)  # fmt: skip


def cmu_like() -> Joint:
    """CMU-style quirks: hip-joint bones starting at the pelvis centre, neck and collars starting at the
    same point, a forearm less than half the upper arm, a hand with two children (fingers, thumb)."""
    arm: Joint = (
        "LeftShoulder",
        (0.0, 0.0, 1.4),
        [
            (
                "LeftArm",
                (0.17, 0.0, 1.43),
                [
                    (
                        "LeftForeArm",
                        (0.44, 0.0, 1.43),
                        [
                            (
                                "LeftHand",
                                (0.56, 0.0, 1.43),
                                [
                                    (
                                        "LeftFingerBase",
                                        (0.56, 0.0, 1.43),
                                        [("LeftHandIndex1", (0.6, 0.0, 1.43), [], (0.63, 0.0, 1.43))],
                                        None,
                                    ),
                                    ("LThumb", (0.56, 0.0, 1.43), [], (0.59, -0.03, 1.43)),
                                ],
                                None,
                            )
                        ],
                        None,
                    )
                ],
                None,
            )
        ],
        None,
    )
    leg: Joint = (
        "LHipJoint",
        (0.0, 0.0, 0.95),
        [
            (
                "LeftUpLeg",
                (0.08, 0.01, 0.88),
                [
                    (
                        "LeftLeg",
                        (0.18, 0.01, 0.5),
                        [
                            (
                                "LeftFoot",
                                (0.29, 0.01, 0.09),
                                [("LeftToeBase", (0.3, -0.1, 0.06), [], (0.3, -0.15, 0.06))],
                                None,
                            )
                        ],
                        None,
                    )
                ],
                None,
            )
        ],
        None,
    )
    return ("Hips", (0.0, 0.0, 0.95), [leg, _side(-1, leg), ("LowerBack", (0.0, 0.0, 0.95), [
        ("Spine", (0.0, 0.01, 1.15), [("Spine1", (0.0, 0.0, 1.4), [
            ("Neck", (0.0, 0.0, 1.4), [("Neck1", (0.0, 0.0, 1.5), [
                ("Head", (0.0, -0.01, 1.58), [], (0.0, 0.0, 1.76))], None)], None),
            arm, _side(-1, arm)], None)], None)], None)], None)  # fmt: skip


CLASSIC = {
    "Shoulder": "Shoulder",
    "Elbow": "Elbow",
    "Wrist": "Wrist",
    "Hip": "Hip",
    "Knee": "Knee",
    "Ankle": "Ankle",
}
CMU = {"Shoulder": "Arm", "Elbow": "ForeArm", "Wrist": "Hand", "Hip": "UpLeg", "Knee": "Leg", "Ankle": "Foot"}
GAME = {
    "Shoulder": "upperarm",
    "Elbow": "lowerarm",
    "Wrist": "hand",
    "Hip": "thigh",
    "Knee": "calf",
    "Ankle": "foot",
}


def expected(kind: dict[str, str], style: str) -> dict[str, str]:
    """OpenPose keypoint -> the bone whose head it is."""
    out = {}
    for side in "RL":
        for part, bone in kind.items():
            name = (
                f"{'Right' if side == 'R' else 'Left'}{bone}"
                if style == "classic"
                else f"{bone}_{side.lower()}"
            )
            out[f"{side}{part}"] = name
    return out


ROT_Y_UP = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # Blender -> Maya/FBX data (Y up, facing +Z)
FACING_PLUS_Y = np.diag([-1.0, -1.0, 1.0])  # turned 180 degrees: the character's left is now at -X


@pytest.mark.parametrize(
    "rig, names, style, head, rotation, scale",
    [
        (classic, CLASSIC, "classic", "Head", None, 100.0),  # BVH centimetres
        (classic, CLASSIC, "classic", "Head", ROT_Y_UP, 1.0),
        (game_rig, GAME, "game", "head", None, 1.0),
        (game_rig, GAME, "game", "head", FACING_PLUS_Y, 1.0),
        (game_rig, GAME, "game", "head", ROT_Y_UP, 0.01),
        (hanging, CLASSIC, "classic", "Head", None, 1.0),
        (cmu_like, CMU, "classic", "Head", None, 1.0),
    ],
    ids=[
        "classic-cm",
        "classic-y-up",
        "game",
        "game-facing-+y",
        "game-y-up-small",
        "arms-down-no-toes",
        "cmu",
    ],
)
def test_hierarchy_guess_with_meaningless_names(rig, names, style, head, rotation, scale):
    bones, original = anonymous(bones_of(rig(), rotation, scale))
    assert all(b.name.startswith("bone_") for b in bones)
    assert B.detect_preset([b.name for b in bones]).preset == "none"  # nothing to go on by name
    guess = B.guess_from_hierarchy(bones)
    assert guess.ok, guess.notes
    got = {KEYPOINT_NAMES[k]: original[ref.name] for k, ref in guess.joints.items()}
    assert got == expected(names, style), "\n".join(guess.found)
    assert all(ref.end == "head" for ref in guess.joints.values())
    assert original[guess.head_bone] == head
    report = B.detect_bone_map(bones)
    assert report.ok and report.preset == "hierarchy" and report.head_guessed
    assert set(report.guessed) == set(B.BODY_KEYPOINTS) and report.computed == (NECK,)
    assert len(report.mapped) == 18  # face points estimated from the guessed head
    text = report.summary()
    assert B.GUESSED in text and "hierarchy: hips" in text


def test_left_and_right_come_from_the_rest_pose_not_the_axis():
    """The same rig turned to face +Y maps its (physically) left arm to LShoulder: the feet decide."""
    for rotation in (None, FACING_PLUS_Y):
        bones, original = anonymous(bones_of(game_rig(), rotation))
        guess = B.guess_from_hierarchy(bones)
        assert original[guess.joints[L_SHOULDER].name] == "upperarm_l"
        assert original[guess.joints[R_HIP].name] == "thigh_r"
        assert any("from the feet" in f for f in guess.found)


def test_without_feet_plus_x_is_left():
    """Feet that point nowhere (the ankle's end straight down): Blender's convention, +X is the left."""
    root = classic()
    bones = [
        b if not b.name.endswith("Ankle") else B.RestBone(b.name, b.parent, b.head, (b.head[0], 0.0, 0.0))
        for b in bones_of(root)
    ]
    guess = B.guess_from_hierarchy(bones)
    assert guess.ok and guess.joints[L_WRIST].name == "LeftWrist" and guess.joints[R_KNEE].name == "RightKnee"
    assert any("+X" in f for f in guess.found)


def test_names_first_then_the_hierarchy_fills_the_gaps():
    """A rig whose names give some joints: those stay, the rest is guessed, and the report says which."""
    bones = bones_of(game_rig())
    keep = {"upperarm_l", "upperarm_r", "lowerarm_l", "lowerarm_r", "hand_l", "hand_r", "head"}
    bones, original = anonymous(bones)
    back = {v: k for k, v in original.items()}
    bones = [
        B.RestBone(original[b.name] if original[b.name] in keep else b.name,
                   (original[b.parent] if original[b.parent] in keep else b.parent) if b.parent else None,
                   b.head, b.tail)
        for b in bones
    ]  # fmt: skip
    report = B.detect_bone_map(bones)
    assert report.ok and report.preset == "unreal" and report.label.endswith(B.GUESSED)
    assert report.joints[R_SHOULDER].name == "upperarm_r" and R_SHOULDER not in report.guessed
    assert report.joints[R_ELBOW].name == "lowerarm_r"
    assert set(report.guessed) == {8, 9, 10, 11, 12, 13}  # the legs
    assert original[report.joints[R_KNEE].name] == "calf_r"
    assert report.head_bone == "head" and not report.head_guessed
    lines = dict(line.split(None, 1) for line in report.summary().splitlines()[1:19])
    assert lines["RKnee"] == f"{back['calf_r']}:head ({B.GUESSED})"
    assert lines["RShoulder"] == "upperarm_r:head"


def test_a_named_rig_is_not_guessed_at():
    bones = bones_of(classic())
    report = B.detect_bone_map(bones)
    assert report.preset == "mocap_classic" and report.guessed == () and report.notes == ()
    # a preset asked for by name is used as is, gaps and all
    assert not B.detect_bone_map(bones, "mixamo").ok


def quadruped() -> Joint:
    """Four legs down, the spine horizontal, the neck forward: not a humanoid."""

    def leg(name, x, y):
        return (f"{name}_upper", (x, y, 0.6), [(f"{name}_lower", (x, y, 0.3), [], (x, y - 0.05, 0.0))], None)

    return ("pelvis", (0.0, 0.5, 0.65), [
        leg("hind_l", 0.15, 0.5), leg("hind_r", -0.15, 0.5), ("tail", (0.0, 0.6, 0.7), [], (0.0, 1.0, 0.8)),
        ("spine", (0.0, 0.3, 0.65), [("chest", (0.0, -0.2, 0.65), [
            leg("front_l", 0.15, -0.2), leg("front_r", -0.15, -0.2),
            ("neck", (0.0, -0.3, 0.7), [("head", (0.0, -0.5, 0.8), [], (0.0, -0.7, 0.8))], None)], None)], None)],
        None)  # fmt: skip


def test_not_humanoid_says_what_it_found():
    guess = B.guess_from_hierarchy(bones_of(quadruped()))
    assert not guess.ok and "no bone where a neck and two arms branch off" in guess.problem
    # legs only (the arms were never rigged)
    legs_only = [b for b in bones_of(classic()) if "Collar" not in b.name and not any(
        s in b.name for s in ("Shoulder", "Elbow", "Wrist"))]  # fmt: skip
    guess = B.guess_from_hierarchy(legs_only)
    assert not guess.ok and "found hips 'Hips' with two legs" in guess.problem
    # a plain chain of bones
    chain = [
        B.RestBone(f"Bone.{i:03d}", f"Bone.{i - 1:03d}" if i else None, (0, 0, i), (0, 0, i + 1))
        for i in range(9)
    ]
    guess = B.guess_from_hierarchy(chain)
    assert not guess.ok and "no bone has 3 or more children" in guess.problem
    assert "too few" in B.guess_from_hierarchy(chain[:3]).problem
    # the report and the user's message carry it
    names = [b.name for b in chain]
    report = B.detect_bone_map(chain)
    assert not report.ok and report.notes == (guess.problem,)
    msg = B.not_humanoid_message(report, names, "Rig")
    assert msg.startswith("Armature 'Rig' does not read as a humanoid: no bone for RShoulder, RElbow")
    assert "match no known rig" in msg and "Bone.000, Bone.001" in msg and "no bone has 3 or more" in msg
    assert B.OVERRIDE_PROPERTY in msg and "Bone Map" in msg
    assert "has no bones" in B.not_humanoid_message(report, [], "Rig")


def test_partial_names_are_named_in_the_message():
    names = ["Hips", "LeftHand", "RightHand", "Head"]
    report = B.detect_bone_map([B.RestBone(n, None, (0, 0, i), (0, 0, i + 1)) for i, n in enumerate(names)])
    msg = B.not_humanoid_message(report, names, "Rig")
    assert (
        "fit Mixamo (mixamorig:) only in part" in msg
        and "(2 keypoints)" in msg
        and "RShoulder" in msg
        and "RWrist" not in msg
    )


def unusual(pelvis=False, spine=3, neck=True, arms_on_neck=False, twist=False) -> Joint:
    """Unreal-like names on the quirks of less common rigs: the legs on a pelvis bone beside the spine
    (both under a root at the hips), a spine of `spine` segments, no neck bone (the head on the chest),
    the clavicles on the neck, twist bones inside the limb chains (between upper arm and forearm, thigh
    and calf), three two-bone fingers."""
    fingers = [(f"finger{k}_01_l", (0.86, dy, 1.43), [(f"finger{k}_02_l", (0.9, dy, 1.43), [], (0.94, dy, 1.43))],
                None) for k, dy in enumerate((-0.03, 0.0, 0.03))]  # fmt: skip
    hand: Joint = ("hand_l", (0.78, 0.0, 1.43), fingers, None)
    fore: Joint = ("lowerarm_l", (0.47, 0.0, 1.43), [hand], None)
    calf: Joint = ("calf_l", (0.1, 0.0, 0.5), [("foot_l", (0.1, 0.0, 0.08), [
        ("ball_l", (0.1, -0.1, 0.02), [], (0.1, -0.16, 0.02))], None)], None)  # fmt: skip
    if twist:
        fore = (
            "lowerarm_l",
            (0.47, 0.0, 1.43),
            [("lowerarm_twist_l", (0.63, 0.0, 1.43), [hand], None)],
            None,
        )
        upper: Joint = ("upperarm_l", (0.18, 0.0, 1.43), [("upperarm_twist_l", (0.32, 0.0, 1.43), [fore], None)],
                        None)  # fmt: skip
        leg: Joint = ("thigh_l", (0.1, 0.0, 0.93), [("thigh_twist_l", (0.1, 0.0, 0.72), [calf], None)], None)
    else:
        upper = ("upperarm_l", (0.18, 0.0, 1.43), [fore], None)
        leg = ("thigh_l", (0.1, 0.0, 0.93), [calf], None)
    arm: Joint = ("clavicle_l", (0.03, 0.0, 1.46), [upper], None)
    head: Joint = ("head", (0.0, -0.01, 1.6), [], (0.0, -0.01, 1.8))
    if arms_on_neck:
        top = [("neck_01", (0.0, 0.0, 1.5), [head, arm, _side(-1, arm)], None)]
    elif neck:
        top = [("neck_01", (0.0, 0.0, 1.5), [head], None), arm, _side(-1, arm)]
    else:
        top = [("head", (0.0, -0.01, 1.5), [], (0.0, -0.01, 1.8)), arm, _side(-1, arm)]
    chest: Joint | None = None
    for i in reversed(range(spine)):
        chest = (
            f"spine_{i + 1:02d}",
            (0.0, 0.0, 1.05 + i * 0.45 / spine),
            top if chest is None else [chest],
            None,
        )
    assert chest is not None
    if pelvis:
        return (
            "root",
            (0.0, 0.0, 0.95),
            [("pelvis", (0.0, 0.0, 0.95), [leg, _side(-1, leg)], None), chest],
            None,
        )
    return ("pelvis", (0.0, 0.0, 0.95), [chest, leg, _side(-1, leg)], None)


@pytest.mark.parametrize(
    "kind, rotation",
    [
        (dict(pelvis=True), None),
        (dict(spine=5, neck=False), None),
        (dict(spine=6), None),
        (dict(arms_on_neck=True), None),
        (dict(twist=True), None),
        (dict(pelvis=True, spine=5, neck=False, twist=True), None),
        (dict(pelvis=True, spine=4, twist=True), FACING_PLUS_Y),
    ],
    ids=["legs-on-a-pelvis-bone", "5-spine-no-neck", "6-spine", "arms-on-the-neck", "twist-in-chain", "all",
         "all-facing-+y"],
)  # fmt: skip
def test_unusual_rigs_get_distinct_limbs_from_the_right_places(kind, rotation):
    bones, original = anonymous(bones_of(unusual(**kind), rotation))
    guess = B.guess_from_hierarchy(bones)
    assert guess.ok, guess.notes
    got = {KEYPOINT_NAMES[k]: original[ref.name] for k, ref in guess.joints.items()}
    assert got == expected(GAME, "game"), "\n".join(guess.found)
    assert original[guess.head_bone] == "head"
    # four chains of their own: no bone gives two limbs' joints
    chains = {}
    for k, ref in guess.joints.items():
        chains.setdefault(ref.name, set()).add(KEYPOINT_NAMES[k][:1] + ("arm" if k in range(2, 8) else "leg"))
    assert all(len(v) == 1 for v in chains.values()), chains
