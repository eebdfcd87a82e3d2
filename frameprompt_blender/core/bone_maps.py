"""Which armature bone gives which OpenPose keypoint: presets, detection, a guess from the hierarchy,
user overrides, face estimation.

Pure module (numpy only): the `bpy` side (`frameprompt_blender.blender.skeleton`) hands it bone names,
parents, rest positions and 4x4 matrices, it answers with joint references and points.

Detection (`detect_bone_map`): the bone names against the presets first; where they leave body joints
unmapped, the hierarchy and rest pose (`guess_from_hierarchy`), each guessed keypoint reported as such.

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

import functools
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

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
GUESSED = "guessed from the hierarchy"

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


# A naming family's matcher: bone names -> (keypoint -> joint, head bone or None).
Matcher = Callable[[list[str]], tuple[dict[int, JointRef], str | None]]


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
    matcher: Matcher | None = None


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
    re.compile(r"^(?P<s>[lr])(?=[A-Z])"),  # lShldr, rThigh (Poser, DAZ, the CMU conversions for them)
    re.compile(r"^(?P<s>[LR])(?=[A-Z][a-z])"),  # LShoulder, RHipJoint
)
# Rig prefixes that carry no meaning: J_Bip_ (VRoid), Bip01_ (3ds Max), DEF-/ORG- (Rigify),
# Character1_, mixamorig_ (a Mixamo namespace that an exporter turned into a prefix).
_NAME_PREFIX = re.compile(r"^(j_bip_(c_)?|bip0?1[_\s]|def[-_]|org[-_]|character\d*_|mixamorig\d*_)", re.I)
# Middle-bone suffixes: head.x (Auto-Rig Pro), Head_M (Advanced Skeleton), head.C.
_CENTER_SUFFIX = re.compile(r"[_.](x|c|m|mid|center|middle)$", re.I)


def _split_side(name: str) -> tuple[str | None, str]:
    """("L" | "R" | None, name without the side marker)."""
    for rx in _SIDE_PATTERNS:
        m = rx.search(name)
        if m:
            return m.group("s")[0].upper(), name[: m.start()] + name[m.end() :]
    return None, name


def _name_parts(full: str) -> tuple[str | None, str]:
    """(side, token) of a bone name: "mixamorig:LeftForeArm" -> ("L", "forearm"), "upper_arm.R" ->
    ("R", "upperarm"), "lShldr" -> ("L", "shldr"), "head.x" -> (None, "head")."""
    name = _NAME_PREFIX.sub("", full.split(":")[-1])
    side, bare = _split_side(name)
    if side is None:
        bare = _CENTER_SUFFIX.sub("", bare)
    return side, re.sub(r"[^a-z]", "", bare.lower())


_PART_KEYPOINTS = {
    "shoulder": (R_SHOULDER, L_SHOULDER), "elbow": (R_ELBOW, L_ELBOW), "wrist": (R_WRIST, L_WRIST),
    "hip": (R_HIP, L_HIP), "knee": (R_KNEE, L_KNEE), "ankle": (R_ANKLE, L_ANKLE), "eye": (R_EYE, L_EYE),
    "ear": (R_EAR, L_EAR),
}  # fmt: skip


def _token_matcher(vocabulary: Mapping[str, tuple[str, ...]]) -> Matcher:
    """A matcher for a naming family, whatever its side convention and prefix: `vocabulary` maps each part
    ("shoulder", "elbow", ...) to the name tokens that mean its joint, best first; a joint is the head of
    the first bone (in bone order) with the best token present. The head bone is the unsided "head"."""

    def match(bone_names: list[str]) -> tuple[dict[int, JointRef], str | None]:
        first: dict[tuple[str | None, str], str] = {}  # (side, token) -> the first bone so named
        for full in bone_names:
            first.setdefault(_name_parts(full), full)
        found: dict[int, JointRef] = {}
        for part, words in vocabulary.items():
            for side, idx in zip(("R", "L"), _PART_KEYPOINTS[part], strict=True):
                hit = next((first[(side, w)] for w in words if (side, w) in first), None)
                if hit is not None:
                    found[idx] = JointRef(hit, "head")
        return found, first.get((None, "head"))

    return match


# LeftArm / Left_UpperArm / UpperArm_L / J_Bip_L_UpperArm / arm.l (Auto-Rig Pro's reference bones).
_generic_match = _token_matcher(
    {
        "shoulder": ("upperarm", "arm"),
        "elbow": ("forearm", "lowerarm", "elbow"),
        "wrist": ("hand", "wrist"),
        "hip": ("upleg", "upperleg", "thigh"),
        "knee": ("leg", "lowerleg", "shin", "calf", "knee"),
        "ankle": ("foot", "ankle"),
        "eye": ("eye",),
        "ear": ("ear",),
    }
)
# Motion capture with the classic joint names (Hips, Chest, LeftCollar, LeftShoulder, LeftElbow, LeftWrist,
# LeftHip, LeftKnee, LeftAnkle; also Advanced Skeleton's Shoulder_L, Hip_L): here "Shoulder" is the joint
# of the upper arm, where Mixamo's LeftShoulder is the collar bone; their own preset keeps them apart.
_classic_match = _token_matcher(
    {
        "shoulder": ("shoulder",),
        "elbow": ("elbow",),
        "wrist": ("wrist", "hand"),
        "hip": ("hip",),
        "knee": ("knee",),
        "ankle": ("ankle", "foot"),
        "eye": ("eye",),
        "ear": ("ear",),
    }
)
# Poser / DAZ names, and the CMU motion-capture conversions made for them: lShldr, lForeArm, lHand, lThigh,
# lShin, lFoot (DAZ Genesis splits the long bones: lShldrBend + lShldrTwist, lForearmBend, lThighBend).
_poser_match = _token_matcher(
    {
        "shoulder": ("shldr", "shldrbend"),
        "elbow": ("forearm", "forearmbend"),
        "wrist": ("hand",),
        "hip": ("thigh", "thighbend"),
        "knee": ("shin",),
        "ankle": ("foot",),
        "eye": ("eye",),
        "ear": ("ear",),
    }
)
# Auto-Rig Pro's deform bones as exported without the control rig (arm_stretch.l, forearm_stretch.l,
# thigh_stretch.l, leg_stretch.l, hand.l, foot.l, head.x). A full Auto-Rig Pro rig also has the reference
# bones arm.l, forearm.l, thigh.l, leg.l, which the generic names already read.
_autorig_match = _token_matcher(
    {
        "shoulder": ("arm", "armstretch"),
        "elbow": ("forearm", "forearmstretch"),
        "wrist": ("hand",),
        "hip": ("thigh", "thighstretch"),
        "knee": ("leg", "legstretch"),
        "ankle": ("foot",),
        "eye": ("eye",),
        "ear": ("ear",),
    }
)


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
# After "generic": a rig that both read alike keeps the generic label it had before these presets.
_add(BonePreset("mocap_classic", "Motion capture, classic names (Hips, Chest, LeftShoulder, LeftElbow, LeftHip ...)",
                {}, ("Head", "head"), dict(_GAME_FACE), matcher=_classic_match))  # fmt: skip
_add(BonePreset("poser", "Poser / DAZ / CMU names (lShldr, lForeArm, lThigh, lShin ...)", {}, ("head", "Head"),
                dict(_GAME_FACE), matcher=_poser_match))  # fmt: skip
_add(BonePreset("autorig_pro", "Auto-Rig Pro deform bones (arm_stretch.l, thigh_stretch.l ...)", {},
                ("head.x",), dict(_GAME_FACE), matcher=_autorig_match))  # fmt: skip


def _strip_namespace(name: str) -> str:
    return name.split(":", 1)[1] if ":" in name else name


@dataclass
class BoneMapReport:
    """The result of mapping an armature to the 18 keypoints.

    joints: keypoint -> JointRef for keypoints read from a bone / object.
    estimated: face keypoints estimated from the head bone (`head_bone`).
    computed: keypoints computed from others (the neck from the shoulders).
    missing: keypoints that cannot be produced (drawn as absent).
    guessed: keypoints whose bone was guessed from the hierarchy and rest pose, not read from a name
    (`head_guessed`: the same for the head bone).
    notes: what the hierarchy guess found, or why it found no humanoid.
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
    guessed: tuple[int, ...] = ()
    head_guessed: bool = False
    notes: tuple[str, ...] = ()

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

    def source(self, i: int) -> str:
        """Where keypoint i comes from, in words: "upper_arm.L:head", "... (guessed from the hierarchy)",
        "estimated from head bone 'Head'", "midpoint of the shoulders", "MISSING"."""
        if i in self.joints:
            if i in self.overridden:
                return f"{self.joints[i]} (override)"
            return f"{self.joints[i]} ({GUESSED})" if i in self.guessed else str(self.joints[i])
        if i in self.estimated:
            src = f"estimated from head bone {self.head_bone!r}"
            return f"{src} ({GUESSED})" if self.head_guessed else src
        return "midpoint of the shoulders" if i in self.computed else "MISSING"

    def summary(self) -> str:
        lines = [f"bone map: {self.label} ({len(self.mapped)}/{NUM_KEYPOINTS} keypoints)"]
        lines.extend(f"  {KEYPOINT_NAMES[i]:<10} {self.source(i)}" for i in range(NUM_KEYPOINTS))
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
                + " (values: 'bone', 'bone:head', 'bone:tail', 'object:<empty name>', '' to drop), "
                "or pick the bones in the FramePrompt panel's Bone Map"
            )
        lines.extend(f"  hierarchy: {note}" for note in self.notes)
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


def _finish(name, label, joints, head, face_offsets, overridden=(), dropped=(), *, guessed=(),
            head_guessed=False, notes=()) -> BoneMapReport:  # fmt: skip
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
                         tuple(overridden), face_offsets, score, tuple(guessed), head_guessed,
                         tuple(notes))  # fmt: skip


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


# -- the hierarchy guess: a humanoid found from parents and rest positions, whatever the bone names ------


@dataclass(frozen=True)
class RestBone:
    """One bone as the hierarchy guess sees it: its parent and its rest head and tail (armature space)."""

    name: str
    parent: str | None
    head: tuple[float, float, float]
    tail: tuple[float, float, float]


@dataclass(frozen=True)
class HierarchyGuess:
    """The 12 body joints and the head bone found from the hierarchy (empty when `problem` says why not),
    and what was found, for the report."""

    joints: dict[int, JointRef]
    head_bone: str | None
    found: tuple[str, ...]
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def notes(self) -> tuple[str, ...]:
        return (*self.found, self.problem) if self.problem else self.found


def _unit_or_zero(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else np.zeros(3)


class _Tree:
    """The bones as index arrays: children, and each subtree as one slice of a depth-first order, so the
    farthest point of a subtree is one vectorised max."""

    def __init__(self, bones: Sequence[RestBone]) -> None:
        self.names = [b.name for b in bones]
        index = {n: i for i, n in enumerate(self.names)}
        parents = [index.get(b.parent, -1) if b.parent is not None else -1 for b in bones]
        self.children: list[list[int]] = [[] for _ in bones]
        for i, p in enumerate(parents):
            if p >= 0:
                self.children[p].append(i)
        self.head = np.array([b.head for b in bones], np.float64).reshape(-1, 3)
        self.tail = np.array([b.tail for b in bones], np.float64).reshape(-1, 3)
        self.roots = [i for i, p in enumerate(parents) if p < 0]
        order: list[int] = []
        self.start = [0] * len(bones)
        self.stop = [0] * len(bones)
        stack: list[tuple[int, bool]] = [(r, False) for r in reversed(self.roots)]
        while stack:
            i, done = stack.pop()
            if done:
                self.stop[i] = len(order)
                continue
            self.start[i] = len(order)
            order.append(i)
            stack.append((i, True))
            stack.extend((c, False) for c in reversed(self.children[i]))
        self._points = np.stack([self.head[order], self.tail[order]], 1)  # (n, 2, 3) in depth-first order

    def farthest(self, i: int, origin: np.ndarray) -> tuple[float, np.ndarray]:
        """(distance, point): the point of bone i's subtree (heads and tails) farthest from origin."""
        pts = self._points[self.start[i] : self.stop[i]].reshape(-1, 3)
        d = np.linalg.norm(pts - origin, axis=1)
        k = int(np.argmax(d))
        return float(d[k]), pts[k]

    def chain(self, i: int, origin: np.ndarray) -> list[int]:
        """The limb's main chain from bone i: always on to the child holding the point farthest from
        origin (the toe tip, the longest finger), so side branches (twist bones, other fingers) drop out."""
        out = [i]
        while self.children[out[-1]]:
            out.append(max(self.children[out[-1]], key=lambda c: self.farthest(c, origin)[0]))
        return out

    def highest(self, i: int, up: np.ndarray) -> float:
        """The height (along up) of the highest point of bone i's subtree."""
        return float((self._points[self.start[i] : self.stop[i]].reshape(-1, 3) @ up).max())

    def chain_up(self, i: int, up: np.ndarray) -> list[int]:
        """The chain from bone i to the highest point of its subtree (the top of the head), stopping where
        the children rise less than a tenth of the bone above its tail (face bones inside the head)."""
        out = [i]
        while self.children[out[-1]]:
            b = out[-1]
            c = max(self.children[b], key=lambda c: self.highest(c, up))
            if self.highest(c, up) <= float(self.tail[b] @ up) + 0.1 * np.linalg.norm(
                self.tail[b] - self.head[b]
            ):
                break
            out.append(c)
        return out

    def chain_text(self, bones: Iterable[int]) -> str:
        return " > ".join(repr(self.names[b]) for b in bones)


@dataclass
class _Branch:
    bone: int
    reach: float
    end: np.ndarray  # the farthest point
    direction: np.ndarray  # unit vector fork -> end
    via: int  # the fork's child it hangs from (itself, or a pelvis or shoulder bone that splits in two)


def _branches(tree: _Tree, fork: int, origin: np.ndarray, keep: int = 6) -> list[_Branch]:
    """The `keep` longest branches of a fork: its children, and the children of a child that splits in
    two or more (legs from a pelvis bone beside the spine, arms from one shoulder bone). Accessories such
    as breast, pelvis or IK bones are short next to limbs, so six are enough even when more long things
    hang there."""
    out = []
    for c in tree.children[fork]:
        for b in [c, *(tree.children[c] if len(tree.children[c]) >= 2 else ())]:
            reach, end = tree.farthest(b, origin)
            if reach > 1e-9:
                out.append(_Branch(b, reach, end, (end - origin) / reach, c))
    return sorted(out, key=lambda b: -b.reach)[:keep]


def _apart(*branches: _Branch) -> bool:
    """No branch holds another: each limb, the spine and the neck are chains of their own."""
    return all(a.bone != b.via and b.bone != a.via for a, b in itertools.combinations(branches, 2))


def _is_fork(tree: _Tree, i: int) -> bool:
    kids = tree.children[i]
    return len(kids) >= 3 or (len(kids) == 2 and any(len(tree.children[c]) >= 2 for c in kids))


def _pair_cost(a: _Branch, b: _Branch, up: np.ndarray) -> float:
    """How far two branches are from mirror images: equal length, ends at equal height."""
    height = abs(float(np.dot(a.end - b.end, up))) / max(a.reach, b.reach)
    return 4 * abs(float(np.log(a.reach / b.reach))) + 4 * height


def _proportion(x: float, expected: float, spread: float) -> float:
    return (np.log(max(x, 1e-9) / expected) / spread) ** 2


@dataclass
class _Body:
    cost: float
    hips: int
    chest: int
    legs: tuple[_Branch, _Branch]
    arms: tuple[_Branch, _Branch]
    neck: _Branch
    up: np.ndarray


def _find_body(tree: _Tree) -> tuple[_Body | None, str]:
    """The best (hips, chest) pair: hips = a bone where a spine and two legs branch off, chest = a bone on
    the spine's main chain where a neck and two arms branch off. Legs hang down and the neck points up
    from the hips-to-chest axis; pairs are mirror images; lengths keep human proportions. A quadruped
    fails the up/down tests. Returns (body, "") or (None, what was found instead)."""
    forks = [i for i in range(len(tree.names)) if _is_fork(tree, i)]
    if not forks:
        return None, (
            f"no bone has 3 or more children, so there is no hips bone where a spine and two legs branch "
            f"off ({len(tree.names)} bones in {len(tree.roots)} chain(s) from "
            + ", ".join(repr(tree.names[r]) for r in tree.roots[:6])
            + ")"
        )
    best: _Body | None = None
    legs_only: tuple[float, int, _Branch, _Branch] | None = None
    at_chests: dict[int, list[_Branch]] = {}
    for h in forks:
        hips = tree.head[h]
        at_hips = _branches(tree, h, hips)
        for spine in at_hips:
            chests = [c for c in tree.chain(spine.bone, hips) if _is_fork(tree, c)]
            for l1, l2 in itertools.combinations([b for b in at_hips if b is not spine], 2):
                if not _apart(spine, l1, l2):
                    continue
                down = _unit_or_zero(l1.direction + l2.direction)
                if np.dot(l1.direction, l2.direction) < 0.5 or np.dot(spine.direction, down) > 0:
                    continue  # legs go the same way, the spine the other
                cost = _pair_cost(l1, l2, down)
                if legs_only is None or cost < legs_only[0]:
                    legs_only = (cost, h, l1, l2)
                for c in chests:
                    chest = tree.head[c]
                    up = _unit_or_zero(chest - hips)
                    if not up.any() or min(np.dot(l1.direction, -up), np.dot(l2.direction, -up)) < 0.5:
                        continue
                    if c not in at_chests:
                        at_chests[c] = _branches(tree, c, chest)
                    at_chest = at_chests[c]
                    for neck in at_chest:
                        if np.dot(neck.direction, up) < 0.5:
                            continue
                        for a1, a2 in itertools.combinations([b for b in at_chest if b is not neck], 2):
                            if not _apart(neck, a1, a2):
                                continue
                            arm = (a1.reach + a2.reach) / 2
                            leg = (l1.reach + l2.reach) / 2
                            cost = (
                                _pair_cost(l1, l2, up)
                                + _pair_cost(a1, a2, up)
                                + 2 * (2 - np.dot(l1.direction, -up) - np.dot(l2.direction, -up))
                                + 2 * (1 - np.dot(neck.direction, up))
                                + _proportion(arm / leg, 0.85, 0.5)
                                + _proportion(neck.reach / arm, 0.55, 0.6)
                                + _proportion(float(np.linalg.norm(chest - hips)) / leg, 0.45, 0.7)
                            )
                            if best is None or cost < best.cost:
                                best = _Body(float(cost), h, c, (l1, l2), (a1, a2), neck, up)
    if best is not None:
        return best, ""
    if legs_only is not None:
        _, h, l1, l2 = legs_only
        return None, (
            f"found hips {tree.names[h]!r} with two legs ({tree.names[l1.bone]!r}, {tree.names[l2.bone]!r}) "
            "but above them no bone where a neck and two arms branch off"
        )
    return None, "no bone where a spine and two legs branch off (bones with 3 or more children: " + ", ".join(
        f"{tree.names[f]!r} ({len(tree.children[f])})" for f in forks[:8]
    ) + ")"


def _line_distance(p: np.ndarray, origin: np.ndarray, axis: np.ndarray) -> float:
    v = p - origin
    return float(np.linalg.norm(v - np.dot(v, axis) * axis))


def _hand_index(tree: _Tree, bones: list[int], pts: np.ndarray) -> int | None:
    """Where the fingers branch off: the first bone (after room for a shoulder and an elbow) with two or
    more children whose subtree is short next to the arm before it. Twist bones also branch, but from
    the upper arm or forearm, whose subtrees hold the rest of the arm."""
    for k in range(2, len(bones)):
        if len(tree.children[bones[k]]) >= 2:
            reach, _ = tree.farthest(bones[k], pts[k])
            if reach <= 0.6 * float(np.linalg.norm(pts[k] - pts[0])):
                return k
    return None


def _pick_limb(
    tree: _Tree, bones: list[int], kind: str, hips: np.ndarray, up: np.ndarray
) -> tuple[int, int, int]:
    """The three joints of a limb chain (indices into its points: the bones' heads, then the last tail):
    shoulder/elbow/wrist or hip/knee/ankle. At rest a limb is often straight, so the choice rests on
    structure and proportions. The wrist is where the fingers branch off (`_hand_index`) when there are
    fingers; the ankle ends a segment that points down, where the foot turns forward. Upper and lower
    segments are about equally long (0.82-1.0 in motion-capture skeletons, 1.05 in the meta-rig; CMU's
    2.2 is why the hand rule comes first). The shoulder lies about 0.65 upper arms from the spine axis,
    the hip about 0.22 thighs, which rules out a collar bone or a hip-joint bone before them."""
    pts = np.concatenate([tree.head[bones], tree.tail[bones[-1:]]])
    m = len(bones)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    hand = _hand_index(tree, bones, pts) if kind == "arm" else None
    best: tuple[float, tuple[int, int, int]] | None = None
    for a, b, c in itertools.combinations(range(m + 1), 3):
        if hand is not None and c != hand:
            continue
        upper, lower = float(np.linalg.norm(pts[b] - pts[a])), float(np.linalg.norm(pts[c] - pts[b]))
        if upper < 1e-9 or lower < 1e-9:
            continue
        spine_dist = _line_distance(pts[a], hips, up) / upper
        cost = _proportion(upper / lower, 1.0, 0.25)
        if kind == "arm":
            cost += ((spine_dist - 0.65) / 0.3) ** 2
        else:
            cost += ((spine_dist - 0.22) / 0.1) ** 2
            into = _unit_or_zero(pts[c] - pts[c - 1])
            cost += 4 * max(0.0, 0.7 - float(np.dot(into, -up)))
            after = pts[c + 1] - pts[c] if c < m else np.zeros(3)
            if np.linalg.norm(after) > 0.3 * lower and float(np.dot(_unit_or_zero(after), -up)) > 0.85:
                cost += 2.0  # a long way on straight down: a point inside the shin (a foot bone is short)
        if seg[a] < 0.15 * upper:
            cost += 1.0  # a stub (DAZ's lButtock before lThigh): the limb starts where the long bone does
        if c == m:
            cost += 1.0  # no hand or foot bone after the joint: possible, but rarer
        rest = float(seg[c:].sum())  # hand (+ fingers) or foot (+ toes) after the last joint
        cost += max(0.0, rest / lower - 1.1) ** 2 / 0.09
        if best is None or cost < best[0]:
            best = (cost, (a, b, c))
    assert best is not None
    return best[1]


def guess_from_hierarchy(bones: Sequence[RestBone]) -> HierarchyGuess:
    """The body joints of a humanoid from the bones' parents and rest positions alone (any names), like
    Godot's BoneMap auto-mapping: the hips (where a spine and two legs branch off), the chest above it
    (where a neck and two arms branch off), the three joints of each limb from human proportions
    (`_pick_limb`), the head bone on the neck chain, and left/right from the rest pose: the character's
    left is up x forward, forward being where the toes point (without feet: +X, Blender's .L side).

    Remembered per rig (the answer depends on nothing else): the viewport overlay and the panel ask again
    on every frame change and redraw."""
    return _guess(tuple(bones))


@functools.lru_cache(maxsize=16)
def _guess(bones: tuple[RestBone, ...]) -> HierarchyGuess:
    if len(bones) < 7:
        return HierarchyGuess(
            {}, None, (), f"{len(bones)} bone(s) are too few for a body (two arms, two legs, a neck)"
        )
    tree = _Tree(bones)
    body, why = _find_body(tree)
    if body is None:
        return HierarchyGuess({}, None, (), why)
    hips = tree.head[body.hips]
    limbs: dict[str, list[tuple[list[int], tuple[int, int, int]]]] = {"leg": [], "arm": []}
    for kind, pair, origin in (("leg", body.legs, hips), ("arm", body.arms, tree.head[body.chest])):
        for branch in pair:
            chain = tree.chain(branch.bone, origin)
            if len(chain) < 2:
                return HierarchyGuess({}, None, (), (
                    f"the {kind} from {tree.names[branch.bone]!r} is a single bone: a limb needs two "
                    "(upper and lower) to place its middle joint"
                ))  # fmt: skip
            limbs[kind].append((chain, _pick_limb(tree, chain, kind, hips, body.up)))

    def point(chain: list[int], k: int) -> tuple[JointRef, np.ndarray]:
        if k < len(chain):
            return JointRef(tree.names[chain[k]], "head"), tree.head[chain[k]]
        return JointRef(tree.names[chain[-1]], "tail"), tree.tail[chain[-1]]

    # forward = where the toes point, seen from above
    toes = np.zeros(3)
    for chain, (_, _, ankle) in limbs["leg"]:
        end = tree.tail[chain[-1]]
        v = end - point(chain, ankle)[1]
        toes += v - np.dot(v, body.up) * body.up
    leg_length = np.mean([b.reach for b in body.legs])
    if np.linalg.norm(toes) > 0.05 * leg_length:
        left = _unit_or_zero(np.cross(body.up, toes))
        side_rule = "left/right from the feet: the character's left is up x the direction its toes point"
    else:
        x = np.array([1.0, 0.0, 0.0])
        left = _unit_or_zero(x - np.dot(x, body.up) * body.up)
        if not left.any():
            left = _unit_or_zero(np.cross(body.up, (0.0, -1.0, 0.0)))
        side_rule = "left/right: the feet point nowhere, so +X is the character's left (Blender's .L side)"

    joints: dict[int, JointRef] = {}
    found = [f"hips {tree.names[body.hips]!r}, chest {tree.names[body.chest]!r}"]
    positions: dict[int, np.ndarray] = {}
    for kind, kps in (("leg", ((R_HIP, R_KNEE, R_ANKLE), (L_HIP, L_KNEE, L_ANKLE))),
                      ("arm", ((R_SHOULDER, R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW, L_WRIST)))):  # fmt: skip
        picked = [[point(chain, k) for k in ks] for chain, ks in limbs[kind]]
        centre = [np.mean([p for _, p in limb], axis=0) for limb in picked]
        first_is_left = float(np.dot(centre[0] - centre[1], left)) > 0
        for side, limb in zip(("R", "L"), picked[::-1] if first_is_left else picked, strict=True):
            idx = kps[0] if side == "R" else kps[1]
            for k, (ref, pos) in zip(idx, limb, strict=True):
                joints[k], positions[k] = ref, pos
            word = "right" if side == "R" else "left"
            found.append(f"{word} {kind}: " + " > ".join(str(ref) for ref, _ in limb))

    # the head bone: on the neck chain, the bone starting closest to 0.45 shoulder widths above the
    # shoulders (metarig 0.50, Mixamo 0.45): the top of the neck
    width = float(np.linalg.norm(positions[L_SHOULDER] - positions[R_SHOULDER]))
    shoulders = float(np.dot((positions[L_SHOULDER] + positions[R_SHOULDER]) / 2, body.up))
    neck = tree.chain_up(body.neck.bone, body.up)
    head = min(neck, key=lambda b: abs(float(np.dot(tree.head[b], body.up)) - shoulders - 0.45 * width))
    found.append(f"head {tree.names[head]!r} (neck chain {tree.chain_text(neck[: neck.index(head) + 1])})")
    found.append(side_rule)
    return HierarchyGuess(joints, tree.names[head], tuple(found))


def detect_bone_map(bones: Sequence[RestBone], preset: str | None = None) -> BoneMapReport:
    """`detect_preset` on the names, then, where the names leave body joints (or the head bone) unmapped,
    the hierarchy guess fills them in, each marked in `guessed`. A named preset is used as is."""
    report = detect_preset([b.name for b in bones], preset)
    if preset is not None or (report.ok and report.head_bone is not None):
        return report
    guess = guess_from_hierarchy(bones)
    if not guess.ok:
        return replace(report, notes=guess.notes)
    joints = {**guess.joints, **report.joints}  # a joint named for what it is beats a guess
    guessed = tuple(sorted(set(guess.joints) - set(report.joints)))
    head_guessed = report.head_bone is None
    if not guessed and not head_guessed:
        return report
    if report.joints:
        name, label = report.preset, f"{report.label} + {GUESSED}"
    else:
        name, label = "hierarchy", f"{GUESSED} (no known bone names)"
    head = report.head_bone if report.head_bone is not None else guess.head_bone
    return _finish(name, label, joints, head, report.face_offsets, guessed=guessed,
                   head_guessed=head_guessed, notes=guess.found)  # fmt: skip


def not_humanoid_message(report: BoneMapReport, bone_names: Sequence[str], armature: str) -> str:
    """Why an armature cannot drive the skeleton (its body joints are not all mapped), naming what was
    found: the bones, the preset that fits in part, what the hierarchy guess found, and the fix."""
    if not bone_names:
        return f"Armature '{armature}' has no bones: FramePrompt reads the pose from a humanoid rig's bones"
    missing = [KEYPOINT_NAMES[i] for i in BODY_KEYPOINTS if i not in report.joints]
    shown = ", ".join(bone_names[:15]) + (f", ... ({len(bone_names)} bones)" if len(bone_names) > 15 else "")
    text = f"Armature '{armature}' does not read as a humanoid: no bone for {', '.join(missing)}."
    if report.joints:
        text += f" Its names fit {report.label} only in part ({len(report.joints)} keypoints)."
    else:
        text += " Its bone names match no known rig."
    text += f" Bones: {shown}."
    if report.notes:
        text += " From the hierarchy: " + "; ".join(report.notes) + "."
    return text + (
        " Fix: pick the bones for the missing keypoints in the FramePrompt panel's Bone Map, or set the "
        f"armature's '{OVERRIDE_PROPERTY}' custom property, e.g. " + json.dumps({missing[0]: "<bone name>"})
    )


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


def _override_key(key) -> int | str:
    """What an override key names: a keypoint index, or "head" (the bone face points are estimated from)."""
    return "head" if re.sub(r"[^a-z]", "", str(key).lower()) in ("head", "headbone") else keypoint_index(key)


def override_mapping(overrides) -> dict:
    """The override mapping as a dict, from a dict or the JSON string stored in the custom property."""
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
    return dict(overrides)


def parse_overrides(overrides) -> dict:
    """Parse an override mapping (dict, or the JSON string stored in the custom property).

    Returns keypoint index -> JointRef (None = drop); the special key "head" names the head bone used to
    estimate face points."""
    return {_override_key(k): parse_override_value(v) for k, v in override_mapping(overrides).items()}


def override_value(overrides, key: str) -> str | None:
    """The stored override of keypoint `key` (under any of its names: "RShoulder", "right_shoulder", "2")
    or of "head"; None when it has none (automatic). "" means: left out."""
    want = _override_key(key)
    return next((v for k, v in override_mapping(overrides).items() if _override_key(k) == want), None)


def with_override(overrides, key: str, value: str | None) -> dict:
    """A copy of the override mapping with keypoint `key` (or "head") set to `value`, stored under `key`;
    None removes it (back to automatic)."""
    want = _override_key(key)
    out = {k: v for k, v in override_mapping(overrides).items() if _override_key(k) != want}
    if value is not None:
        out[key] = value
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
        report.preset, report.label + " + overrides", joints, head, report.face_offsets, over, dropped,
        guessed=tuple(i for i in report.guessed if i not in parsed),
        head_guessed=report.head_guessed and head == report.head_bone, notes=report.notes,
    )  # fmt: skip


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
