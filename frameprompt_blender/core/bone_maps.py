"""Which armature bone gives which OpenPose keypoint: presets, detection, user overrides, face estimation.

Pure module (numpy only): the `bpy` side (`frameprompt_blender.blender.skeleton`) hands it bone names and
4x4 matrices, it answers with joint references and points.

Rules the pose models expect (DWPose convention):
- Neck is the midpoint of the two shoulders, never a spine bone (unless the user overrides it).
- Blender `.R`/Right = the subject's right = OpenPose "R".
- Face points (nose, eyes, ears) come from bones named for them when the rig has them, otherwise they
  are estimated from the head bone: a fixed point in the head bone's local frame, placed at rest from
  human proportions (per preset), so it turns and nods with the head.

Overrides: a dict (stored on the armature as the JSON custom property `frameprompt_bone_map`) of
keypoint name -> "bone", "bone:head", "bone:tail", "object:Name" (an empty or any object: its origin),
a plain object name (used when no bone has that name), or "" / null to drop the keypoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .keypoints import (
    FACE_KEYPOINTS,
    KEYPOINT_NAMES,
    L_ANKLE,
    L_EAR,
    L_ELBOW,
    L_EYE,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    NECK,
    NOSE,
    NUM_KEYPOINTS,
    R_ANKLE,
    R_EAR,
    R_ELBOW,
    R_EYE,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    keypoint_index,
)

OVERRIDE_PROPERTY = "frameprompt_bone_map"

# The 12 limb joints that identify a rig (neck is computed, face points are optional).
BODY_KEYPOINTS: tuple[int, ...] = (
    R_SHOULDER,
    R_ELBOW,
    R_WRIST,
    L_SHOULDER,
    L_ELBOW,
    L_WRIST,
    R_HIP,
    R_KNEE,
    R_ANKLE,
    L_HIP,
    L_KNEE,
    L_ANKLE,
)


@dataclass(frozen=True)
class JointRef:
    """A point on the rig: the head or tail of a bone, or the origin of an object (an empty)."""

    name: str
    end: str = "head"  # "head" | "tail" (bones only)
    kind: str = "bone"  # "bone" | "object" | "auto" (override not yet resolved: bone if one has that name)

    def __str__(self) -> str:
        if self.kind == "object":
            return f"object:{self.name}"
        return f"{self.name}:{self.end}"


# Face offsets, in units of the rest shoulder width, in the rig's rest body frame (see rest_body_frame):
# (up, forward, left) from the head bone's head (the top of the neck). "center" is the middle of the
# skull, used to decide which face points the head itself hides. Measured on Blender's human metarig
# (spine.006 head; nose.002 head, eye.L head, ear.L head; upper_arm heads 0.39 m apart).
_METARIG_FACE = {
    NOSE: (0.272, 0.384, 0.0),
    R_EYE: (0.343, 0.164, -0.133),
    L_EYE: (0.343, 0.164, 0.133),
    R_EAR: (0.205, -0.038, -0.236),
    L_EAR: (0.205, -0.038, 0.236),
    "center": (0.285, -0.02, 0.0),  # about level with the ears, so both show from the front and the back
}
# Mixamo, Unreal and MakeHuman rigs also start the head bone at the top of the neck; until measured on
# real characters they use the metarig's proportions (a per-preset table, so they can diverge). Odd
# characters: map face bones or empties with overrides.
_GAME_FACE = dict(_METARIG_FACE)


def _sided(template: str, side: str) -> str:
    return (
        template.replace("{S}", side)
        .replace("{s}", side.lower())
        .replace("{Side}", "Right" if side == "R" else "Left")
    )


def _joints(spec: Mapping[str, tuple[tuple[str, str], ...]]) -> dict[int, tuple[JointRef, ...]]:
    """Expand {"Shoulder": (("upper_arm.{S}", "head"), ...)} into both sides' keypoints."""
    sides = {"Shoulder": (R_SHOULDER, L_SHOULDER), "Elbow": (R_ELBOW, L_ELBOW), "Wrist": (R_WRIST, L_WRIST),
             "Hip": (R_HIP, L_HIP), "Knee": (R_KNEE, L_KNEE), "Ankle": (R_ANKLE, L_ANKLE),
             "Eye": (R_EYE, L_EYE), "Ear": (R_EAR, L_EAR)}  # fmt: skip
    out: dict[int, tuple[JointRef, ...]] = {}
    for part, cands in spec.items():
        if part == "Nose":
            out[NOSE] = tuple(JointRef(n, e) for n, e in cands)
            continue
        for side, idx in zip(("R", "L"), sides[part], strict=True):
            out[idx] = tuple(JointRef(_sided(n, side), e) for n, e in cands)
    return out


@dataclass(frozen=True)
class BonePreset:
    name: str
    label: str
    joints: dict[int, tuple[JointRef, ...]]  # keypoint -> candidates, first present wins
    head: tuple[str, ...]  # head bone candidates (for face estimation)
    face_offsets: dict = field(default_factory=lambda: dict(_METARIG_FACE))
    matcher: Callable[[list[str]], tuple[dict[int, JointRef], str | None]] | None = None


def _metarig_like(prefix: str) -> dict[str, tuple[tuple[str, str], ...]]:
    p = prefix
    return {
        "Shoulder": ((f"{p}upper_arm.{{S}}", "head"),),
        "Elbow": ((f"{p}forearm.{{S}}", "head"), (f"{p}upper_arm.{{S}}", "tail")),
        "Wrist": ((f"{p}hand.{{S}}", "head"), (f"{p}forearm.{{S}}", "tail")),
        "Hip": ((f"{p}thigh.{{S}}", "head"),),
        "Knee": ((f"{p}shin.{{S}}", "head"), (f"{p}thigh.{{S}}", "tail")),
        "Ankle": ((f"{p}foot.{{S}}", "head"), (f"{p}shin.{{S}}", "tail")),
        "Eye": ((f"{p}eye.{{S}}", "head"),),
        "Ear": ((f"{p}ear.{{S}}", "head"),),
        "Nose": ((f"{p}nose.002", "head"), (f"{p}nose.001", "tail")),
    }


_SIDE_PATTERNS = (
    re.compile(r"^(?P<s>left|right)[_.\-\s]*", re.I),  # LeftArm, Left_UpperArm, left arm
    re.compile(r"[_.\-\s]*(?P<s>left|right)$", re.I),  # ArmLeft, upper_arm_left
    re.compile(r"^(?P<s>[LRlr])[_.\-\s]+"),  # L_UpperArm, l.arm
    re.compile(r"[_.\-\s]+(?P<s>[LRlr])$"),  # UpperArm_L, upper_arm.l
)


def _split_side(name: str) -> tuple[str | None, str]:
    """("L" | "R" | None, name without the side marker)."""
    for rx in _SIDE_PATTERNS:
        m = rx.search(name)
        if m:
            return m.group("s")[0].upper(), name[: m.start()] + name[m.end() :]
    return None, name


def _generic_match(bone_names: list[str]) -> tuple[dict[int, JointRef], str | None]:
    """Rule-based matching for LeftArm / Left_UpperArm / UpperArm_L / J_Bip_L_UpperArm style names."""
    parts = {
        "shoulder": ("upperarm", "arm"),
        "elbow": ("forearm", "lowerarm", "elbow"),
        "wrist": ("hand", "wrist"),
        "hip": ("upleg", "upperleg", "thigh"),
        "knee": ("leg", "lowerleg", "shin", "calf", "knee"),
        "ankle": ("foot", "ankle"),
        "eye": ("eye",),
        "ear": ("ear",),
    }
    kp_of = {
        ("shoulder", "R"): R_SHOULDER, ("shoulder", "L"): L_SHOULDER, ("elbow", "R"): R_ELBOW,
        ("elbow", "L"): L_ELBOW, ("wrist", "R"): R_WRIST, ("wrist", "L"): L_WRIST, ("hip", "R"): R_HIP,
        ("hip", "L"): L_HIP, ("knee", "R"): R_KNEE, ("knee", "L"): L_KNEE, ("ankle", "R"): R_ANKLE,
        ("ankle", "L"): L_ANKLE, ("eye", "R"): R_EYE, ("eye", "L"): L_EYE, ("ear", "R"): R_EAR,
        ("ear", "L"): L_EAR,
    }  # fmt: skip
    found: dict[int, JointRef] = {}
    head: str | None = None
    for full in bone_names:
        name = full.split(":")[-1]
        # drop common rig prefixes: J_Bip_ (VRoid), Bip01_ (3ds Max), DEF-/ORG- (Rigify), Character1_ ...
        name = re.sub(r"^(j_bip_(c_)?|bip0?1[_\s]|def[-_]|org[-_]|character\d*_)", "", name, flags=re.I)
        side, bare = _split_side(name)
        token = re.sub(r"[^a-z]", "", bare.lower())
        if side is None:
            if token == "head" and head is None:
                head = full
            continue
        for part, words in parts.items():
            if token in words:
                idx = kp_of[(part, side)]
                found.setdefault(idx, JointRef(full, "head"))
    return found, head


PRESETS: dict[str, BonePreset] = {}


def _add(p: BonePreset) -> None:
    PRESETS[p.name] = p


_add(BonePreset("rigify", "Rigify (generated control rig, ORG- bones)", _joints(_metarig_like("ORG-")),
                ("ORG-spine.006", "head", "DEF-spine.006")))  # fmt: skip
_add(BonePreset("rigify_deform", "Rigify deform bones (DEF-)",
                _joints(_metarig_like("DEF-") | {"Eye": (("DEF-eye.{S}", "head"), ("ORG-eye.{S}", "head"))}),
                ("DEF-spine.006",)))  # fmt: skip
_add(BonePreset("metarig", "Blender human meta-rig", _joints(_metarig_like("")), ("spine.006", "head")))
_add(
    BonePreset(
        "mixamo",
        "Mixamo (mixamorig:)",
        _joints(
            {
                "Shoulder": (("{Side}Arm", "head"),),
                "Elbow": (("{Side}ForeArm", "head"), ("{Side}Arm", "tail")),
                "Wrist": (("{Side}Hand", "head"), ("{Side}ForeArm", "tail")),
                "Hip": (("{Side}UpLeg", "head"),),
                "Knee": (("{Side}Leg", "head"), ("{Side}UpLeg", "tail")),
                "Ankle": (("{Side}Foot", "head"), ("{Side}Leg", "tail")),
                "Eye": (("{Side}Eye", "head"),),
                "Ear": (("{Side}Ear", "head"),),
                "Nose": (("Nose", "head"),),
            }
        ),
        ("Head",),
        dict(_GAME_FACE),
    )
)
_add(
    BonePreset(
        "mpfb",
        "MPFB / MakeHuman default skeleton",
        _joints(
            {
                "Shoulder": (("upperarm01.{S}", "head"),),
                "Elbow": (("lowerarm01.{S}", "head"), ("upperarm02.{S}", "tail")),
                "Wrist": (("wrist.{S}", "head"), ("lowerarm02.{S}", "tail")),
                # MPFB's own OpenPose export uses the tail of upperleg01 (= head of upperleg02) as the hip.
                "Hip": (("upperleg02.{S}", "head"), ("upperleg01.{S}", "tail")),
                "Knee": (("lowerleg01.{S}", "head"), ("upperleg02.{S}", "tail")),
                "Ankle": (("foot.{S}", "head"), ("lowerleg02.{S}", "tail")),
                "Eye": (("eye.{S}", "head"),),
                "Ear": (("ear.{S}", "head"),),
                "Nose": (("nose", "head"),),
            }
        ),
        ("head",),
        dict(_GAME_FACE),
    )
)
_add(
    BonePreset(
        "unreal",
        "Unreal mannequin (pelvis, upperarm_l, calf_l ...)",
        _joints(
            {
                "Shoulder": (("upperarm_{s}", "head"),),
                "Elbow": (("lowerarm_{s}", "head"),),
                "Wrist": (("hand_{s}", "head"),),
                "Hip": (("thigh_{s}", "head"),),
                "Knee": (("calf_{s}", "head"),),
                "Ankle": (("foot_{s}", "head"),),
                "Eye": (("eye_{s}", "head"), ("FACIAL_{S}_Eye", "head")),
                "Ear": (("ear_{s}", "head"),),
                "Nose": (("nose", "head"),),
            }
        ),
        ("head",),
        dict(_GAME_FACE),
    )
)
_add(BonePreset("generic", "Generic names (LeftArm, Left_UpperArm, UpperArm_L ...)", {}, ("Head", "head"),
                dict(_GAME_FACE), matcher=_generic_match))  # fmt: skip


def _strip_namespace(name: str) -> str:
    return name.split(":", 1)[1] if ":" in name else name


@dataclass
class BoneMapReport:
    """The result of mapping an armature to the 18 keypoints.

    joints: keypoint -> JointRef for keypoints read from a bone / object.
    estimated: face keypoints estimated from the head bone (`head_bone`).
    computed: keypoints computed from others (the neck from the shoulders).
    missing: keypoints that cannot be produced (drawn as absent).
    """

    preset: str
    label: str
    joints: dict[int, JointRef]
    head_bone: str | None
    estimated: tuple[int, ...]
    computed: tuple[int, ...]
    missing: tuple[int, ...]
    overridden: tuple[int, ...] = ()
    face_offsets: dict = field(default_factory=dict)
    score: int = 0

    @property
    def mapped(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.joints) | set(self.estimated) | set(self.computed)))

    @property
    def mapped_names(self) -> list[str]:
        return [KEYPOINT_NAMES[i] for i in self.mapped]

    @property
    def missing_names(self) -> list[str]:
        return [KEYPOINT_NAMES[i] for i in self.missing]

    @property
    def ok(self) -> bool:
        """True when every body joint (shoulders, elbows, wrists, hips, knees, ankles) is mapped."""
        return all(i in self.joints for i in BODY_KEYPOINTS)

    def summary(self) -> str:
        lines = [f"bone map: {self.label} ({len(self.mapped)}/{NUM_KEYPOINTS} keypoints)"]
        for i in range(NUM_KEYPOINTS):
            if i in self.joints:
                src = str(self.joints[i]) + (" (override)" if i in self.overridden else "")
            elif i in self.estimated:
                src = f"estimated from head bone {self.head_bone!r}"
            elif i in self.computed:
                src = "midpoint of the shoulders"
            else:
                src = "MISSING"
            lines.append(f"  {KEYPOINT_NAMES[i]:<10} {src}")
        if self.missing:
            lines.append(
                "  fix: map the missing keypoints with the armature custom property "
                f"'{OVERRIDE_PROPERTY}', a JSON object such as "
                + json.dumps(
                    {
                        KEYPOINT_NAMES[i]: "<bone name>:head"
                        for i in [m for m in self.missing if m != NECK][:2]
                    }
                )
                + " (values: 'bone', 'bone:head', 'bone:tail', 'object:<empty name>', '' to drop)"
            )
        return "\n".join(lines)


def _resolve_preset(preset: BonePreset, bone_names: list[str]) -> BoneMapReport:
    lookup: dict[str, str] = {}
    for n in bone_names:
        lookup.setdefault(n, n)
    for n in bone_names:  # "mixamorig:LeftArm" also answers to "LeftArm"
        lookup.setdefault(_strip_namespace(n), n)
    joints: dict[int, JointRef] = {}
    head: str | None = None
    if preset.matcher is not None:
        joints, head = preset.matcher(bone_names)
    else:
        for idx, cands in preset.joints.items():
            for c in cands:
                real = lookup.get(c.name)
                if real is not None:
                    joints[idx] = JointRef(real, c.end)
                    break
    if head is None:
        head = next((lookup[h] for h in preset.head if h in lookup), None)
    return _finish(preset.name, preset.label, joints, head, dict(preset.face_offsets))


def _finish(name, label, joints, head, face_offsets, overridden=(), dropped=()) -> BoneMapReport:
    computed = []
    if NECK not in joints and NECK not in dropped and R_SHOULDER in joints and L_SHOULDER in joints:
        computed.append(NECK)
    estimated = []
    if head is not None:
        estimated = [i for i in FACE_KEYPOINTS if i not in joints and i not in dropped]
    have = set(joints) | set(computed) | set(estimated)
    missing = tuple(i for i in range(NUM_KEYPOINTS) if i not in have)
    score = sum(1 for i in BODY_KEYPOINTS if i in joints) * 10 + sum(1 for i in FACE_KEYPOINTS if i in joints)
    score += 5 if head is not None else 0
    return BoneMapReport(name, label, dict(joints), head, tuple(estimated), tuple(computed), missing,
                         tuple(overridden), face_offsets, score)  # fmt: skip


def detect_preset(bone_names: Iterable[str], preset: str | None = None) -> BoneMapReport:
    """Map bone names to keypoints with the best-fitting preset (or the named one).

    The preset mapping the most body joints wins; ties go to the earlier preset in PRESETS.
    """
    names = list(bone_names)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown bone-map preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return _resolve_preset(PRESETS[preset], names)
    best: BoneMapReport | None = None
    for p in PRESETS.values():
        r = _resolve_preset(p, names)
        if best is None or r.score > best.score:
            best = r
    assert best is not None
    if best.score == 0:
        best = _finish("none", "no known bone names", {}, None, dict(_METARIG_FACE))
    return best


def parse_override_value(value) -> JointRef | None:
    """ "bone" / "bone:head" / "bone:tail" / "object:Name" / plain name -> JointRef; ""/None -> None (drop)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"bone-map override values must be strings like 'upper_arm.L:head', got {value!r}")
    v = value.strip()
    if not v:
        return None
    if v.lower().startswith("object:"):
        return JointRef(v[7:], "head", "object")
    base, sep, end = v.rpartition(":")
    if sep and end.lower() in ("head", "tail"):
        return JointRef(base, end.lower(), "bone")
    return JointRef(v, "head", "auto")


def parse_overrides(overrides) -> dict:
    """Parse an override mapping (dict, or the JSON string stored in the custom property).

    Returns keypoint index -> JointRef (None = drop); the special key "head" names the head bone used to
    estimate face points."""
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"the '{OVERRIDE_PROPERTY}' custom property is not valid JSON ({e}); "
                'write it like {"RShoulder": "upperarm_R:head", "Nose": "object:NoseEmpty"}'
            ) from None
    if not isinstance(overrides, Mapping):
        raise ValueError(
            f"bone-map overrides must be a JSON object keypoint -> bone, got {type(overrides).__name__}"
        )
    out: dict = {}
    for k, v in overrides.items():
        if re.sub(r"[^a-z]", "", str(k).lower()) in ("head", "headbone"):
            out["head"] = parse_override_value(v)  # the bone the face points are estimated from
            continue
        out[keypoint_index(k)] = parse_override_value(v)
    return out


def apply_overrides(
    report: BoneMapReport,
    overrides,
    bone_names: Iterable[str] | None = None,
    object_names: Iterable[str] | None = None,
) -> BoneMapReport:
    """Merge user overrides into a detected map. With bone_names/object_names given, "auto" references are
    resolved (a bone of that name first, else an object) and unknown names raise ValueError."""
    parsed = parse_overrides(overrides)
    if not parsed:
        return report
    bones = set(bone_names) if bone_names is not None else None
    objects = set(object_names) if object_names is not None else None
    joints = dict(report.joints)
    dropped: list[int] = []
    head = report.head_bone
    if "head" in parsed:
        h = parsed.pop("head")
        head = None if h is None else h.name
        if head is not None and bones is not None and head not in bones:
            raise ValueError(
                f"bone-map override head -> {head!r}: the armature has no such bone; "
                f"fix the '{OVERRIDE_PROPERTY}' custom property"
            )
    for idx, ref in parsed.items():
        joints.pop(idx, None)
        if ref is None:
            dropped.append(idx)
            continue
        if ref.kind == "auto" and bones is not None:
            if ref.name in bones:
                ref = JointRef(ref.name, ref.end, "bone")
            elif objects is not None and ref.name in objects:
                ref = JointRef(ref.name, "head", "object")
        if bones is not None and ref.kind in ("bone", "auto") and ref.name not in bones:
            hint = f" (no bone or object named {ref.name!r})" if ref.kind == "auto" else ""
            raise ValueError(
                f"bone-map override {KEYPOINT_NAMES[idx]} -> {ref.name!r}: the armature has no such bone{hint}; "
                f"fix the '{OVERRIDE_PROPERTY}' custom property"
            )
        if objects is not None and ref.kind == "object" and ref.name not in objects:
            raise ValueError(
                f"bone-map override {KEYPOINT_NAMES[idx]} -> object {ref.name!r}: no such object in the file; "
                f"fix the '{OVERRIDE_PROPERTY}' custom property"
            )
        joints[idx] = ref
    over = tuple(sorted(i for i, r in parsed.items() if r is not None))
    return _finish(
        report.preset, report.label + " + overrides", joints, head, report.face_offsets, over, dropped
    )


# -- face estimation (pure maths on 4x4 matrices) -------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.linalg.norm(v))
    return None if n < 1e-9 else v / n


def rest_body_frame(
    head_rest: np.ndarray, l_shoulder: np.ndarray | None, r_shoulder: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(up, forward, left, scale) of the rig at rest, in armature space.

    left: right->left shoulder (fallback +X, Blender's `.L` side); up: shoulders' midpoint -> head, made
    perpendicular to left (fallback +Z); forward = left x up (Blender characters face -Y: X x Z = -Y).
    scale: the shoulder width (fallback: 0.39 m, the metarig's).
    """
    head_rest = np.asarray(head_rest, np.float64)
    left = up = None
    scale = 0.39
    if l_shoulder is not None and r_shoulder is not None:
        d = np.asarray(l_shoulder, np.float64) - np.asarray(r_shoulder, np.float64)
        left = _unit(d)
        if left is not None:
            scale = float(np.linalg.norm(d))
            mid = (np.asarray(l_shoulder) + np.asarray(r_shoulder)) / 2
            u = head_rest - mid
            up = _unit(u - np.dot(u, left) * left)
    if left is None:
        left = np.array([1.0, 0.0, 0.0])
    if up is None:
        z = np.array([0.0, 0.0, 1.0])
        up = _unit(z - np.dot(z, left) * left)
        if up is None:
            up = np.array([0.0, 1.0, 0.0])
    forward = np.cross(left, up)
    return up, forward, left, scale


def face_local_offsets(
    head_rest_matrix: np.ndarray,
    l_shoulder_rest: np.ndarray | None,
    r_shoulder_rest: np.ndarray | None,
    offsets: Mapping,
    keypoints: Iterable = (*FACE_KEYPOINTS, "center"),
) -> dict:
    """Face points (and "center") in the head bone's local space, as homogeneous 4-vectors.

    head_rest_matrix: the head bone's rest matrix in armature space (`Bone.matrix_local`). Multiply the
    result by the posed matrix (`PoseBone.matrix`) to get posed armature-space points.
    """
    m = np.asarray(head_rest_matrix, np.float64).reshape(4, 4)
    origin = m[:3, 3]
    up, forward, left, scale = rest_body_frame(origin, l_shoulder_rest, r_shoulder_rest)
    inv = np.linalg.inv(m)
    out = {}
    for k in keypoints:
        if k not in offsets:
            continue
        a, b, c = offsets[k]
        p = origin + scale * (a * up + b * forward + c * left)
        out[k] = inv @ np.append(p, 1.0)
    return out


def face_visibility(points: Mapping[int, np.ndarray], center: np.ndarray, camera_pos: np.ndarray | None,
                    view_dir: np.ndarray | None = None, threshold: float = -0.15) -> dict[int, bool]:  # fmt: skip
    """Which face points the head itself hides, treating the head as a sphere around `center`.

    A point is visible when its outward direction (from the centre) faces the camera:
    dot(normalize(p - center), normalize(camera_pos - p)) > threshold (perspective), or with `view_dir`
    (orthographic: the camera's viewing direction) dot(n, -view_dir) > threshold. So a character seen from
    behind has no nose or eyes, and a profile shows one eye and one ear, as a detector would see it.
    """
    out = {}
    c = np.asarray(center, np.float64)
    for k, p in points.items():
        p = np.asarray(p, np.float64)[:3]
        n = _unit(p - c[:3])
        if n is None:
            out[k] = True
            continue
        to_cam = -np.asarray(view_dir, np.float64) if view_dir is not None else np.asarray(camera_pos) - p
        t = _unit(to_cam)
        out[k] = True if t is None else float(np.dot(n, t)) > threshold
    return out
