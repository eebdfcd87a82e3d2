"""Motion capture in: a BVH or FBX file read by Blender's own importers (`import_anim.bvh`,
`import_scene.fbx`), as a new armature, or its animation put onto an existing armature.

"Onto" assigns the clip's action as it is when the armature has every bone the clip animates (the clip
was made for that skeleton: a Mixamo character and Mixamo animations, a BVH and a rig built from it);
for any other humanoid it retargets (`blender.retarget`): bones paired by their role in the body,
limbs aimed as the clip's, the hips' motion scaled by leg length, baked into a new action.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import bpy

from ..core.retarget import RetargetError
from .export import FramePromptUserError
from .retarget import bake_retarget

IMPORTERS = {".bvh": ("import_anim", "bvh", "BVH format (io_anim_bvh)"),
             ".fbx": ("import_scene", "fbx", "FBX format (io_scene_fbx)")}  # fmt: skip
_BONE_PATH = re.compile(r'^pose\.bones\["((?:[^"\\]|\\.)*)"\]')


def _importer(suffix: str) -> Any:
    if suffix not in IMPORTERS:
        raise FramePromptUserError(
            f"Motion-capture files must be .bvh or .fbx, not '{suffix or 'no extension'}'"
        )
    group, name, addon = IMPORTERS[suffix]
    op = getattr(getattr(bpy.ops, group), name)
    try:
        op.get_rna_type()
    except KeyError:
        raise FramePromptUserError(
            f"Blender's {suffix} importer is off: enable the add-on '{addon}' in Preferences > Add-ons"
        ) from None
    return op


def _fcurves(action: Any, animation_data: Any) -> Any:
    """The action's F-curves: through its slot's channelbag in Blender 4.4+ (`Action.fcurves` is gone
    in 5.0), directly before."""
    slot = getattr(animation_data, "action_slot", None)
    if slot is not None:
        from bpy_extras.anim_utils import action_get_channelbag_for_slot

        bag = action_get_channelbag_for_slot(action, slot)
        return bag.fcurves if bag is not None else []
    return action.fcurves


def action_fcurves(action: Any) -> list[Any]:
    """Every F-curve of an action, in all its slots (Blender 4.4+ keeps them in channelbags)."""
    layers = getattr(action, "layers", None)
    if layers:
        return [
            fc
            for layer in layers
            for strip in layer.strips
            for bag in strip.channelbags
            for fc in bag.fcurves
        ]
    return list(getattr(action, "fcurves", ()))


def bone_names_in(fcurves: Any) -> set[str]:
    """The bones whose channels these F-curves animate."""
    found = (_BONE_PATH.match(fc.data_path) for fc in fcurves)
    return {m.group(1).replace('\\"', '"') for m in found if m}


def animated_bones(armature_obj: Any) -> set[str]:
    """The names of the bones the armature's action animates."""
    ad = armature_obj.animation_data
    if ad is None or ad.action is None:
        return set()
    return bone_names_in(_fcurves(ad.action, ad))


def import_mocap(path: str | Path, scene: Any = None, *, onto: Any = None, scale: float = 1.0) -> Any:
    """Import a .bvh or .fbx file into `scene` (default: the active one) and return the armature that
    plays it; the scene's frame range becomes the clip's.

    onto None: the file's armature (with its meshes, for an FBX character). onto an armature: the clip's
    action is assigned to it when it has every bone the clip animates, otherwise the clip is retargeted
    onto it (a new action keyed on every frame of the clip); what the file brought in is removed again.
    `scale` is the importers' own (BVH in centimetres: 0.01; retargeting scales by leg length anyway).
    """
    path = Path(bpy.path.abspath(str(path)))
    if not path.is_file():
        raise FramePromptUserError(f"Motion-capture file {path} not found")
    op = _importer(path.suffix.lower())
    scene = scene or bpy.context.scene
    window = bpy.context.window
    if window is not None and window.scene != scene:  # the importers add to the context's scene
        window.scene = scene
    before = set(bpy.data.objects)
    result = op(filepath=str(path), global_scale=float(scale))
    added = [o for o in bpy.data.objects if o not in before]
    arms = sorted((o for o in added if o.type == "ARMATURE"), key=lambda o: -len(o.data.bones))
    if "FINISHED" not in result or not arms:
        for o in added:
            bpy.data.objects.remove(o)
        raise FramePromptUserError(f"{path.name} holds no armature: a motion-capture file needs a skeleton")
    clip = arms[0]
    ad = clip.animation_data
    if ad is None or ad.action is None:
        raise FramePromptUserError(f"{path.name} holds a skeleton but no animation")
    action = ad.action
    first = int(round(action.frame_range[0]))
    scene.frame_start, scene.frame_end = first, max(first, int(round(action.frame_range[1])))
    if onto is None:
        return clip

    try:
        if animated_bones(clip) <= {b.name for b in onto.data.bones}:
            slot = getattr(ad, "action_slot", None)
            target = onto.animation_data or onto.animation_data_create()
            target.action = action
            if slot is not None:
                target.action_slot = slot
        else:
            frames = range(scene.frame_start, scene.frame_end + 1)
            bake_retarget(clip, onto, frames, scene=scene, action_name=f"{path.stem} ({onto.name})")
            bpy.data.actions.remove(action)
    except RetargetError as error:
        raise FramePromptUserError(
            f"{path.name} cannot go onto armature '{onto.name}': {error.message}; or import it as a new "
            "armature"
        ) from None
    finally:
        for o in added:
            bpy.data.objects.remove(o)
    return onto
