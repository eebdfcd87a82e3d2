"""Bone-map presets, detection, overrides, face estimation (pure, no bpy)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from frameprompt_blender.core import bone_maps as B
from frameprompt_blender.core.keypoints import (
    KEYPOINT_NAMES,
    L_EYE,
    L_HIP,
    L_SHOULDER,
    NECK,
    NOSE,
    R_EAR,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
)

ROLES = ("upper_arm", "forearm", "hand", "thigh", "shin", "foot")

# Bone names as each tool writes them (the relevant subset of real rigs).
RIGS = {
    "metarig": ["spine", "spine.004", "spine.006", "shoulder.L", "shoulder.R", "eye.L", "eye.R", "ear.L", "ear.R",
                "nose", "nose.001", "nose.002"] + [f"{r}.{s}" for r in ROLES for s in "LR"],
    "rigify": ["root", "torso", "head", "neck", "ORG-spine.006", "DEF-spine.006", "ORG-eye.L", "ORG-eye.R",
               "ORG-ear.L", "ORG-ear.R", "ORG-nose.001", "ORG-nose.002"]
    + [f"{p}{r}.{s}" for p in ("ORG-", "DEF-") for r in ROLES for s in "LR"]
    + [f"{r}_fk.{s}" for r in ROLES[:3] for s in "LR"] + ["hand_ik.L", "hand_ik.R"],
    "rigify_deform": ["DEF-spine", "DEF-spine.006", "DEF-ear.L", "DEF-ear.R"]
    + [f"DEF-{r}{x}.{s}" for r in ROLES for s in "LR" for x in ("", ".001")],
    "mixamo": [f"mixamorig:{n}" for n in ["Hips", "Spine", "Spine1", "Spine2", "Neck", "Head", "HeadTop_End"]]
    + [f"mixamorig:{side}{p}" for side in ("Left", "Right")
       for p in ("Shoulder", "Arm", "ForeArm", "Hand", "UpLeg", "Leg", "Foot", "ToeBase", "HandIndex1")],
    "mpfb": ["root", "spine05", "neck01", "head", "eye.L", "eye.R"]
    + [f"{n}.{s}" for n in ("clavicle", "shoulder01", "upperarm01", "upperarm02", "lowerarm01", "lowerarm02",
                            "wrist", "pelvis", "upperleg01", "upperleg02", "lowerleg01", "lowerleg02", "foot")
       for s in "LR"],
    "unreal": ["root", "pelvis", "spine_01", "spine_02", "spine_03", "neck_01", "head"]
    + [f"{n}_{s}" for n in ("clavicle", "upperarm", "lowerarm", "hand", "thigh", "calf", "foot", "ball") for s in "lr"],
    "generic": ["Hips", "Spine", "Neck", "Head"]
    + [f"{side}_{p}" for side in ("Left", "Right") for p in ("UpperArm", "LowerArm", "Hand", "UpperLeg", "LowerLeg", "Foot")],
    # classic motion-capture names: LeftShoulder is the upper arm here, LeftCollar the collar bone
    "mocap_classic": ["Hips", "Chest", "Neck", "Head"]
    + [f"{side}{p}" for side in ("Left", "Right") for p in ("Collar", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")],
    # Poser / DAZ / the CMU conversions for them
    "poser": ["hip", "abdomen", "chest", "neck", "head", "leftEye", "rightEye"]
    + [f"{s}{p}" for s in "lr" for p in ("Collar", "Shldr", "ForeArm", "Hand", "Buttock", "Thigh", "Shin", "Foot")],
    # Auto-Rig Pro's exported deform bones
    "autorig_pro": ["root.x", "spine_01.x", "spine_02.x", "neck.x", "head.x"]
    + [f"{p}.{s}" for s in "lr" for p in ("shoulder", "arm_stretch", "arm_twist", "forearm_stretch", "forearm_twist",
                                          "hand", "thigh_stretch", "thigh_twist", "leg_stretch", "leg_twist", "foot")],
}  # fmt: skip


@pytest.mark.parametrize("preset", list(RIGS))
def test_detection_maps_every_body_joint(preset):
    r = B.detect_preset(RIGS[preset])
    assert r.preset == preset, r.summary()
    assert r.ok and not r.missing, r.summary()
    assert r.computed == (NECK,)
    assert len(r.mapped) == 18


def test_preset_details():
    r = B.detect_preset(RIGS["mixamo"])
    assert r.joints[R_SHOULDER] == B.JointRef("mixamorig:RightArm", "head")
    assert r.joints[R_WRIST].name == "mixamorig:RightHand"
    assert r.head_bone == "mixamorig:Head" and set(r.estimated) == {0, 14, 15, 16, 17}
    # other namespaces (mixamorig1:, none at all) are recognised too
    assert (
        B.detect_preset([n.replace("mixamorig:", "mixamorig1:") for n in RIGS["mixamo"]]).preset == "mixamo"
    )
    assert B.detect_preset([n.split(":")[1] for n in RIGS["mixamo"]]).preset == "mixamo"
    # face bones win over estimation; the nose is the tip (nose.002 head)
    r = B.detect_preset(RIGS["metarig"])
    assert r.joints[NOSE] == B.JointRef("nose.002", "head") and r.joints[L_EYE].name == "eye.L"
    assert r.estimated == ()
    # the generated Rigify rig reads ORG- bones (they follow FK and IK), never the FK controls
    r = B.detect_preset(RIGS["rigify"])
    assert r.joints[R_WRIST].name == "ORG-hand.R" and r.head_bone == "ORG-spine.006"
    r = B.detect_preset(RIGS["mpfb"])
    assert r.joints[8] == B.JointRef("upperleg02.R", "head")
    r = B.detect_preset(["J_Bip_C_Head"] + [f"J_Bip_{s}_{p}" for p in ("UpperArm", "LowerArm", "Hand", "UpperLeg",
                                                                    "LowerLeg", "Foot") for s in "LR"])  # fmt: skip
    assert r.preset == "generic" and r.ok and r.head_bone == "J_Bip_C_Head"
    with pytest.raises(ValueError, match="unknown bone-map preset"):
        B.detect_preset([], "maya")


CLASSIC_PARTS = {
    "Shoulder": R_SHOULDER,
    "Elbow": R_ELBOW,
    "Wrist": R_WRIST,
    "Hip": R_HIP,
    "Knee": R_KNEE,
    "Ankle": 10,
}


@pytest.mark.parametrize(
    "right, left",
    [
        ("Right{}", "Left{}"),
        ("{}.R", "{}.L"),
        ("{}_r", "{}_l"),
        ("R_{}", "L_{}"),
        ("{}_R", "{}_L"),  # Advanced Skeleton: Shoulder_R, Hip_R, with Head_M
        ("r{}", "l{}"),
    ],
)
def test_classic_names_in_every_side_convention(right, left):
    names = ["Hips", "Chest", "Neck", "Head_M" if right == "{}_R" else "Head"]
    names += [t.format(p) for t in (right, left) for p in ("Collar", *CLASSIC_PARTS)]
    r = B.detect_preset(names)
    assert r.preset == "mocap_classic" and r.ok and len(r.mapped) == 18, r.summary()
    for part, idx in CLASSIC_PARTS.items():
        assert r.joints[idx] == B.JointRef(right.format(part), "head")
        assert r.joints[idx + 3].name == left.format(part)
    assert r.head_bone == names[3]


def test_mixamo_shoulder_is_the_collar_not_the_arm():
    """Mixamo's LeftShoulder is the collar bone; classic motion capture's is the upper arm. A rig with
    both LeftShoulder and LeftArm is Mixamo-style, whatever its prefix or namespace."""
    for prefix in ("mixamorig:", "mixamorig1:", "mixamorig_", ""):
        r = B.detect_preset([n.replace("mixamorig:", prefix) for n in RIGS["mixamo"]])
        assert r.ok and r.joints[R_SHOULDER].name == f"{prefix}RightArm", (prefix, r.summary())
        assert r.joints[L_SHOULDER].name == f"{prefix}LeftArm"
        assert r.head_bone == f"{prefix}Head"


def test_new_family_details():
    r = B.detect_preset(RIGS["poser"])
    assert r.joints[R_SHOULDER] == B.JointRef("rShldr", "head") and r.joints[R_HIP].name == "rThigh"
    assert r.joints[L_EYE].name == "leftEye" and r.head_bone == "head"
    genesis = ["head"] + [f"{s}{p}" for s in "lr" for p in ("ShldrBend", "ShldrTwist", "ForearmBend", "ForearmTwist",
                                                           "Hand", "ThighBend", "ThighTwist", "Shin", "Foot")]  # fmt: skip
    r = B.detect_preset(genesis)
    assert (
        r.preset == "poser"
        and r.ok
        and r.joints[R_ELBOW].name == "rForearmBend"
        and r.joints[L_HIP].name == "lThighBend"
    )
    r = B.detect_preset(RIGS["autorig_pro"])
    assert r.joints[R_SHOULDER].name == "arm_stretch.r" and r.joints[R_KNEE].name == "leg_stretch.r"
    assert r.head_bone == "head.x"
    # a full Auto-Rig Pro rig's reference bones (arm.l, forearm.l, ...) read as generic names, as before
    r = B.detect_preset(
        ["head.x"] + [f"{p}.{s}" for s in "lr" for p in ("arm", "forearm", "hand", "thigh", "leg", "foot")]
    )
    assert r.preset == "generic" and r.ok and r.joints[R_SHOULDER].name == "arm.r" and r.head_bone == "head.x"


def test_unknown_rig_gets_a_report_of_what_to_map():
    r = B.detect_preset(["Bone", "Bone.001", "Bone.002"])
    assert not r.ok and r.preset == "none"
    assert set(r.missing_names) == set(KEYPOINT_NAMES)
    text = r.summary()
    assert "MISSING" in text and B.OVERRIDE_PROPERTY in text and "RShoulder" in text


def test_overrides():
    names = ["Bone", "Bone.001", "arm_r", "HeadBone"] + [f"{r}.{s}" for r in ROLES for s in "LR"]
    base = B.detect_preset(names)
    over = {
        "RShoulder": "arm_r:tail",
        "Nose": "object:NoseEmpty",
        "LEar": "",
        "head": "HeadBone",
        "r_wrist": "Bone",
    }
    r = B.apply_overrides(base, json.dumps(over), names, ["NoseEmpty", "Camera"])
    assert r.joints[R_SHOULDER] == B.JointRef("arm_r", "tail", "bone")
    assert r.joints[NOSE] == B.JointRef("NoseEmpty", "head", "object")
    assert r.joints[R_WRIST] == B.JointRef("Bone", "head", "bone")
    assert 17 in r.missing and r.head_bone == "HeadBone"
    assert set(r.overridden) == {R_SHOULDER, NOSE, R_WRIST}
    assert "(override)" in r.summary()
    # a plain name that is not a bone but an object becomes an object reference
    r = B.apply_overrides(base, {"REar": "EarEmpty"}, names, ["EarEmpty"])
    assert r.joints[R_EAR] == B.JointRef("EarEmpty", "head", "object")
    # the neck can be taken from a bone instead of the shoulders
    r = B.apply_overrides(base, {"Neck": "Bone.001:head"}, names, [])
    assert r.joints[NECK].name == "Bone.001" and NECK not in r.computed
    with pytest.raises(ValueError, match="no such bone"):
        B.apply_overrides(base, {"RShoulder": "nope:head"}, names, [])
    with pytest.raises(ValueError, match="not valid JSON"):
        B.parse_overrides("{RShoulder: x}")
    with pytest.raises(ValueError, match="unknown keypoint"):
        B.parse_overrides({"tail": "Bone"})


def test_face_offsets_follow_the_head_bone():
    # metarig-like rest: head bone from (0, -0.025, 1.781) up to (0, -0.025, 1.98); shoulders 0.39 apart
    rest = np.eye(4)
    rest[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # bone Y axis = world +Z (pointing up)
    rest[:3, 3] = (0, -0.025, 1.781)
    ls, rs = np.array([0.195, 0.027, 1.585]), np.array([-0.195, 0.027, 1.585])
    local = B.face_local_offsets(rest, ls, rs, B.PRESETS["metarig"].face_offsets)
    nose_rest = (rest @ local[NOSE])[:3]
    # the metarig's own nose tip (nose.002 head) is at (0, -0.197, 1.845)
    assert np.allclose(nose_rest, (0, -0.197, 1.845), atol=0.01)
    eye_rest = (rest @ local[L_EYE])[:3]
    assert np.allclose(eye_rest, (0.052, -0.121, 1.894), atol=0.01)
    # turn the head 90 degrees to its left (about +Z): the nose now points to +X
    turn = np.eye(4)
    turn[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    posed = turn.copy()
    posed[:3, 3] = rest[:3, 3]
    posed[:3, :3] = turn[:3, :3] @ rest[:3, :3]
    nose = (posed @ local[NOSE])[:3] - rest[:3, 3]
    assert nose[0] > 0.15 and abs(nose[1]) < 1e-9 and nose[2] == pytest.approx(0.064, abs=0.01)


def test_face_visibility():
    center = np.zeros(3)
    pts = {0: np.array([0, -0.1, 0.0]), 16: np.array([-0.1, 0, 0.0]), 17: np.array([0.1, 0, 0.0])}
    front = B.face_visibility(pts, center, camera_pos=np.array([0, -5.0, 0]))
    assert front == {0: True, 16: True, 17: True}
    back = B.face_visibility(pts, center, camera_pos=np.array([0, 5.0, 0]))
    assert back[0] is False and back[16] and back[17]
    side = B.face_visibility(pts, center, None, view_dir=np.array([-1.0, 0, 0]))  # ortho from +X
    assert side[17] and not side[16]
