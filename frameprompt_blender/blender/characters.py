"""Procedural character variety for the synthetic training set: one rig, many humanoids.

Every character is a deterministic function of an integer id (`character_params(id)`, pure Python, no
bpy): proportions (height, legs, torso, arms, shoulder and hip width, head size), body shape (torso
and limb girth), clothing (skin tone, shirt, trousers or shorts, sleeves, shoes, a pattern: plain,
stripes, belt or two-tone) and hair from primitives (none, cap, bun, spiky, long) or a hat.
`build_character(params)` (inside Blender) builds the armature with the demo rig's metarig bone names,
so the skeleton export, bone maps and procedural motions of `frameprompt_blender.blender.render_dataset` work
unchanged, and one mesh skinned to it (one vertex group per bone, weight 1).

Held-out split (fixed, documented in docs/model_card.md): character ids with `id % 10 == 0` are the
test characters, all others the training characters. `pool_ids("train", k)` / `pool_ids("test", k)`
give the first k ids of each pool, so a training set never contains a test character whatever its size.
"""

from __future__ import annotations

import random
from typing import Any

HELD_OUT_MODULUS = 10

SKIN_TONES = [
    (0.96, 0.80, 0.69),
    (0.90, 0.68, 0.54),
    (0.78, 0.57, 0.44),
    (0.62, 0.42, 0.30),
    (0.45, 0.30, 0.20),
    (0.30, 0.20, 0.14),
]
HAIR_COLOURS = [
    (0.05, 0.04, 0.03),
    (0.25, 0.15, 0.07),
    (0.55, 0.35, 0.15),
    (0.85, 0.70, 0.40),
    (0.60, 0.20, 0.08),
    (0.80, 0.80, 0.80),
    (0.20, 0.30, 0.80),
]
PATTERNS = ("plain", "stripes", "belt", "two_tone")
HAIR_STYLES = ("none", "cap", "bun", "spiky", "long", "hat")


def is_held_out(character_id: int) -> bool:
    """The fixed test split: ids that are multiples of 10 never appear in training data."""
    return character_id % HELD_OUT_MODULUS == 0


def pool_ids(pool: str, count: int) -> list[int]:
    """The first `count` character ids of the 'train' or 'test' pool."""
    if pool not in ("train", "test"):
        raise ValueError(f"character pool must be 'train' or 'test', got {pool!r}")
    if count <= 0:
        raise ValueError("the number of characters must be positive")
    if pool == "test":
        return [HELD_OUT_MODULUS * i for i in range(count)]
    ids: list[int] = []
    i = 0
    while len(ids) < count:
        if not is_held_out(i):
            ids.append(i)
        i += 1
    return ids


def _colour(rng: random.Random, lo: float = 0.05, hi: float = 0.95) -> tuple[float, float, float]:
    """A saturated-ish random colour (HSV with random hue)."""
    import colorsys

    h, s, v = rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.3, 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (lo + (hi - lo) * r, lo + (hi - lo) * g, lo + (hi - lo) * b)


def character_params(character_id: int) -> dict[str, Any]:
    """All the random choices of one character (JSON-serialisable, deterministic in the id)."""
    rng = random.Random(1_000_003 * 7 + character_id)
    return {
        "id": character_id,
        "height": rng.uniform(0.85, 1.12),
        "legs": rng.uniform(0.85, 1.15),
        "torso": rng.uniform(0.85, 1.15),
        "arms": rng.uniform(0.85, 1.12),
        "shoulders": rng.uniform(0.8, 1.3),
        "hips": rng.uniform(0.8, 1.3),
        "head": rng.uniform(0.85, 1.3),
        "girth": rng.uniform(0.75, 1.5),
        "limb_girth": rng.uniform(0.75, 1.4),
        "skin": rng.choice(SKIN_TONES),
        "shirt": _colour(rng),
        "trousers": _colour(rng, 0.03, 0.7),
        "shoes": _colour(rng, 0.02, 0.5),
        "accent": _colour(rng),
        "hair_colour": rng.choice(HAIR_COLOURS),
        "pattern": rng.choice(PATTERNS),
        "hair": rng.choice(HAIR_STYLES),
        "long_sleeves": rng.random() < 0.5,
        "shorts": rng.random() < 0.3,
    }


# --- geometry (pure Python) ---------------------------------------------------------------------
def _length_factor(name: str, p: dict[str, Any]) -> float:
    base = name.split(".")[0]
    if name == "spine.006":
        return p["head"]
    if base == "spine":
        return p["torso"]
    if base == "shoulder":
        return p["shoulders"]
    if base in ("upper_arm", "forearm", "hand"):
        return p["arms"]
    if base in ("thigh", "shin"):
        return p["legs"]
    return 1.0


def character_bones(
    params: dict[str, Any], rest_bones: dict | None = None
) -> dict[str, tuple[tuple, tuple, str | None, bool]]:
    """The demo rig's bones (same names, parents, connections) with this character's proportions.
    `rest_bones` defaults to `demo_scene.BONES` (which needs bpy to import)."""
    if rest_bones is None:
        from .demo_scene import BONES

        rest_bones = BONES
    BONES = rest_bones

    p = params
    new: dict[str, tuple[tuple, tuple, str | None, bool]] = {}
    # root: the hips sit on legs of the new length (the rest legs span z 0.98 -> 0.02 plus the foot)
    root_z = 0.04 + 0.96 * p["legs"]
    for name, (head, tail, parent, connected) in BONES.items():  # parents come before children
        if parent is None:
            h = (head[0], head[1], root_z)
        elif connected:
            h = new[parent][1]
        else:
            ph = BONES[parent][0]
            base = name.split(".")[0]
            sx = (
                p["hips"] if base == "thigh" else p["shoulders"] if base in ("upper_arm", "shoulder") else 1.0
            )
            sz = p["torso"] if base in ("shoulder",) else 1.0
            off = (head[0] - ph[0], head[1] - ph[1], head[2] - ph[2])
            nph = new[parent][0]
            h = (nph[0] + off[0] * sx, nph[1] + off[1], nph[2] + off[2] * sz)
        k = _length_factor(name, p)
        t = tuple(h[i] + (tail[i] - head[i]) * k for i in range(3))
        new[name] = (tuple(h), t, parent, connected)
    s = p["height"]
    return {
        n: (tuple(v * s for v in h), tuple(v * s for v in t), par, c) for n, (h, t, par, c) in new.items()
    }


# material slots
SKIN, SHIRT, TROUSERS, SHOES, HAIR, ACCENT = range(6)


def body_parts(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Primitive list: {bone, kind ('tube'|'sphere'|'cone'|'box'), material, radius, ...} in bone space
    terms; positions are fractions along the bone (0 head, 1 tail) plus offsets in metres."""
    p = params
    g, lg, s = p["girth"], p["limb_girth"], p["height"]
    two_tone = p["pattern"] == "two_tone"
    parts: list[dict[str, Any]] = []

    def tube(bone, radius, mat, a=0.0, b=1.0, taper=0.85):
        parts.append(dict(bone=bone, kind="tube", material=mat, radius=radius * s, a=a, b=b, taper=taper))

    torso = {"spine": 0.13, "spine.001": 0.13, "spine.002": 0.14, "spine.003": 0.15}
    for i, (bone, r) in enumerate(torso.items()):
        mat = SHIRT if not (two_tone and i < 2) else ACCENT
        tube(bone, r * g, mat)
    tube("spine.004", 0.05 * max(1.0, g * 0.8), SKIN)
    parts.append(dict(bone="spine.006", kind="sphere", material=SKIN, radius=0.11 * p["head"] * s, at=0.5))
    for side in ("L", "R"):
        tube(f"upper_arm.{side}", 0.05 * lg, SHIRT)
        tube(f"forearm.{side}", 0.04 * lg, SHIRT if p["long_sleeves"] else SKIN)
        tube(f"hand.{side}", 0.035 * lg, SKIN)
        tube(f"thigh.{side}", 0.075 * lg * max(1.0, g * 0.85), TROUSERS)
        tube(f"shin.{side}", 0.055 * lg, SKIN if p["shorts"] else TROUSERS)
        tube(f"foot.{side}", 0.045, SHOES)
    if p["pattern"] == "stripes":
        for bone, r in torso.items():
            tube(bone, r * g * 1.06, ACCENT, a=0.35, b=0.65, taper=1.0)
    if p["pattern"] == "belt":
        tube("spine", 0.13 * g * 1.08, ACCENT, a=0.0, b=0.3, taper=1.0)
    head_r = 0.11 * p["head"] * s
    hair = p["hair"]
    if hair == "cap":
        parts.append(dict(bone="spine.006", kind="sphere", material=HAIR, radius=head_r * 1.08, at=0.62))
    elif hair == "bun":
        parts.append(dict(bone="spine.006", kind="sphere", material=HAIR, radius=head_r * 1.04, at=0.58))
        parts.append(
            dict(bone="spine.006", kind="sphere", material=HAIR, radius=head_r * 0.5, at=0.9, dy=0.08 * s)
        )
    elif hair == "spiky":
        for k in range(5):
            ang = -0.8 + 0.4 * k
            parts.append(
                dict(bone="spine.006", kind="cone", material=HAIR, radius=head_r * 0.35, length=head_r * 0.9,
                     at=0.75, tilt=ang)
            )  # fmt: skip
        parts.append(dict(bone="spine.006", kind="sphere", material=HAIR, radius=head_r * 1.02, at=0.56))
    elif hair == "long":
        parts.append(dict(bone="spine.006", kind="sphere", material=HAIR, radius=head_r * 1.06, at=0.58))
        parts.append(
            dict(bone="spine.006", kind="box", material=HAIR, size=(head_r * 1.7, head_r * 0.5, head_r * 2.2),
                 at=0.25, dy=head_r * 0.7)
        )  # fmt: skip
    elif hair == "hat":
        parts.append(dict(bone="spine.006", kind="tube", material=ACCENT, radius=head_r * 1.6, a=0.78, b=0.8,
                          taper=1.0))  # fmt: skip
        parts.append(dict(bone="spine.006", kind="tube", material=ACCENT, radius=head_r * 0.95, a=0.78, b=1.15,
                          taper=0.9))  # fmt: skip
    return parts


# --- Blender ----------------------------------------------------------------------------------
def build_character(params: dict[str, Any], collection: Any = None) -> tuple[Any, Any]:
    """Add this character's armature and skinned mesh to `collection` (default: the scene's);
    returns (armature, body)."""
    import bmesh
    import bpy
    from mathutils import Matrix, Vector

    from .demo_scene import build_armature

    collection = collection or bpy.context.scene.collection
    bones = character_bones(params)
    tag = f"FP_Char{params['id']}"
    arm = build_armature(collection, bones, tag + "Rig")

    mesh = bpy.data.meshes.new(tag + "Body")
    body = bpy.data.objects.new(tag + "Body", mesh)
    collection.objects.link(body)
    colours = [params["skin"], params["shirt"], params["trousers"], params["shoes"], params["hair_colour"],
               params["accent"]]  # fmt: skip
    for i, colour in enumerate(colours):
        mat = bpy.data.materials.new(f"{tag}_M{i}")
        mat.diffuse_color = (*colour, 1.0)  # type: ignore[assignment]  # the stubs type it as an array
        mesh.materials.append(mat)
    bm = bmesh.new()
    deform = bm.verts.layers.deform.verify()
    groups: dict[str, int] = {}
    up = Vector((0, 0, 1))
    for part in body_parts(params):
        head, tail = (Vector(v) for v in bones[part["bone"]][:2])
        axis = tail - head
        rot = up.rotation_difference(axis.normalized()).to_matrix().to_4x4()
        kind = part["kind"]
        if kind == "tube":
            a, b = part["a"], part["b"]
            length = max(1e-3, axis.length * (b - a))
            geom = bmesh.ops.create_cone(bm, cap_ends=True, segments=8, radius1=part["radius"],
                                         radius2=part["radius"] * part["taper"], depth=length)  # fmt: skip
            xf = Matrix.Translation(head + axis * ((a + b) / 2)) @ rot
        elif kind == "sphere":
            geom = bmesh.ops.create_uvsphere(bm, u_segments=12, v_segments=8, radius=part["radius"])
            xf = Matrix.Translation(head + axis * part["at"] + Vector((0, part.get("dy", 0.0) - 0.01, 0)))
        elif kind == "cone":
            geom = bmesh.ops.create_cone(bm, cap_ends=True, segments=6, radius1=part["radius"], radius2=0.0,
                                         depth=part["length"])  # fmt: skip
            tilt = Matrix.Rotation(part["tilt"], 4, "Y")
            xf = (
                Matrix.Translation(head + axis * part["at"])
                @ tilt
                @ Matrix.Translation((0, 0, part["length"] / 2))
            )
        else:  # box
            geom = bmesh.ops.create_cube(bm, size=1.0)
            sx, sy, sz = part["size"]
            xf = Matrix.Translation(
                head + axis * part["at"] + Vector((0, part.get("dy", 0.0), 0))
            ) @ Matrix.Diagonal((sx, sy, sz, 1.0))
        verts = geom["verts"]
        bmesh.ops.transform(bm, matrix=xf, verts=verts)
        gi = groups.setdefault(part["bone"], len(groups))
        for v in verts:
            v[deform][gi] = 1.0
        for f in {f for v in verts for f in v.link_faces}:
            f.material_index = part["material"]
    bm.to_mesh(mesh)
    bm.free()
    for name, _gi in sorted(groups.items(), key=lambda kv: kv[1]):
        body.vertex_groups.new(name=name)
    mod = body.modifiers.new("Armature", "ARMATURE")
    mod.object = arm
    body.parent = arm
    return arm, body


def replace_demo_character(demo: Any, params: dict[str, Any]) -> Any:
    """Swap the demo scene's humanoid for this character (same bone names); returns the DemoScene with
    its armature and body replaced. The demo's camera, light and ground stay."""
    import bpy

    for obj in (demo.body, demo.armature):
        bpy.data.objects.remove(obj, do_unlink=True)
    arm, body = build_character(params, demo.scene.collection)
    demo.armature, demo.body = arm, body
    bpy.context.view_layer.objects.active = arm
    return demo


def describe(params: dict[str, Any]) -> str:
    """A short human-readable summary (for meta.json 'source' strings and the model card)."""
    return (
        f"char{params['id']}:{params['pattern']},{params['hair']},"
        f"h{params['height']:.2f},g{params['girth']:.2f}"
        + (",shorts" if params["shorts"] else "")
        + (",long-sleeves" if params["long_sleeves"] else "")
    )


__all__ = [
    "HELD_OUT_MODULUS",
    "body_parts",
    "build_character",
    "character_bones",
    "character_params",
    "describe",
    "is_held_out",
    "pool_ids",
    "replace_demo_character",
]
