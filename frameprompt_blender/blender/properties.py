"""Per-scene settings of the panel (``scene.frameprompt``), saved with the .blend."""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from ..core.keypoints import KEYPOINT_NAMES
from ..wire.protocol import ModelSize, fit_model_size

# (id, label, width, height)
RESOLUTION_PRESETS: list[tuple[str, str, int, int]] = [
    ("480P_PORTRAIT", "480p portrait (480×832)", 480, 832),
    ("480P_LANDSCAPE", "480p landscape (832×480)", 832, 480),
    ("SQUARE_512", "Square (512×512)", 512, 512),
]

# LoRA names the backend advertised in its last hello (filled by jobs.py).
_BACKEND_LORAS: list[str] = []
_LORA_ITEMS_CACHE: list[tuple[str, str, str]] = []


def set_backend_loras(names: list[str]) -> None:
    _BACKEND_LORAS[:] = [str(n) for n in names]


# The model's sizes from the backend's last hello (`model_size`, protocol revision 3; filled by jobs.py).
_BACKEND_MODEL_SIZE: list[ModelSize] = []


def set_backend_model_size(hello: Any) -> ModelSize | None:
    """Remember the model sizes a hello reported (None/no `model_size`: forget them)."""
    ms = ModelSize.from_hello(hello)
    _BACKEND_MODEL_SIZE[:] = [ms] if ms is not None else []
    return ms


def backend_model_size() -> ModelSize | None:
    return _BACKEND_MODEL_SIZE[0] if _BACKEND_MODEL_SIZE else None


def camera_aspect(scene: Any) -> float:
    """Width / height of what the scene camera renders (resolution and pixel aspect)."""
    r = scene.render
    return (r.resolution_x * r.pixel_aspect_x) / max(1e-6, r.resolution_y * r.pixel_aspect_y)


def model_output_size(scene: Any, model: ModelSize | None = None) -> tuple[int, int] | None:
    """The "Model size" choice: the scene camera's aspect at the model's native pixel count, in the
    model's size multiples, within its largest size; None while the backend has not reported its model."""
    model = model or backend_model_size()
    if model is None:
        return None
    return fit_model_size(camera_aspect(scene), model)


def _lora_items(self: Any, context: Any) -> list[tuple[str, str, str]]:
    # Blender keeps only references to the strings: hold them in a module-level list.
    _LORA_ITEMS_CACHE[:] = [("NONE", "None", "No LoRA: the base model")]
    _LORA_ITEMS_CACHE.extend((n, n, f"LoRA '{n}' served by the backend") for n in _BACKEND_LORAS)
    return _LORA_ITEMS_CACHE


def _poll_armature(self: Any, obj: Any) -> bool:
    return obj.type == "ARMATURE"


def _poll_camera(self: Any, obj: Any) -> bool:
    return obj.type == "CAMERA"


def _preset_update(self: Any, context: Any) -> None:
    for ident, _label, w, h in RESOLUTION_PRESETS:
        if ident == self.resolution_preset:
            self.width, self.height = w, h
            return
    if self.resolution_preset == "MODEL":
        size = model_output_size(context.scene)
        if size is not None:
            self.width, self.height = size
        return
    if self.resolution_preset == "SCENE":
        r = context.scene.render
        pct = r.resolution_percentage / 100.0
        self.width = max(16, int(round(r.resolution_x * pct / 16.0)) * 16)
        self.height = max(16, int(round(r.resolution_y * pct / 16.0)) * 16)


class FRAMEPROMPT_SceneSettings(bpy.types.PropertyGroup):
    armature: PointerProperty(  # type: ignore[valid-type]
        name="Armature",
        description="Rig whose animation drives the video (empty = the active object if it is an armature)",
        type=bpy.types.Object,
        poll=_poll_armature,
    )
    camera: PointerProperty(  # type: ignore[valid-type]
        name="Camera",
        description="Camera the skeleton is projected through (empty = the scene camera)",
        type=bpy.types.Object,
        poll=_poll_camera,
    )
    use_scene_start: BoolProperty(  # type: ignore[valid-type]
        name="Start at scene start",
        description="Start at the scene's first frame",
        default=True,
    )
    frame_start: IntProperty(  # type: ignore[valid-type]
        name="Start frame",
        description="First animation frame sent to the model",
        default=1,
    )
    num_frames: IntProperty(  # type: ignore[valid-type]
        name="Frames (N)",
        description="Number of frames to generate (the pose frames start..start+N-1). Any count works: "
        "the backend animates windows of its model's length (40 frames by default) and carries the last "
        "frames of each window into the next, so long shots stay continuous",
        default=16,
        min=1,
        soft_max=256,
    )
    resolution_preset: EnumProperty(  # type: ignore[valid-type]
        name="Resolution",
        description="Output size; width and height must be multiples of 16",
        # new items go last: a .blend stores the item's index
        items=[(i, label, f"{w}×{h}") for i, label, w, h in RESOLUTION_PRESETS]
        + [
            ("SCENE", "Scene resolution", "The scene's render size rounded to multiples of 16"),
            ("CUSTOM", "Custom", "Width and height below"),
            (
                "MODEL",
                "Model size",
                "The scene camera's aspect at the pixel count the backend's model was made for, within the "
                "largest size it takes (Test Connection reads it; until then, width and height below)",
            ),
        ],
        default="MODEL",
        update=_preset_update,
    )
    width: IntProperty(  # type: ignore[valid-type]
        name="Width", description="Output width (multiple of 16)", default=480, min=16, soft_max=1280, step=16
    )
    height: IntProperty(  # type: ignore[valid-type]
        name="Height",
        description="Output height (multiple of 16)",
        default=832,
        min=16,
        soft_max=1280,
        step=16,
    )
    reference_source: EnumProperty(  # type: ignore[valid-type]
        name="Reference",
        description="Where the appearance of the character comes from",
        items=[
            ("RENDER", "Render scene", "Render the scene with its render engine at the reference frame"),
            ("IMAGE", "Image file", "Use an image file (e.g. concept art) as the reference"),
        ],
        default="RENDER",
    )
    reference_frame_offset: IntProperty(  # type: ignore[valid-type]
        name="Reference frame",
        description="Frame rendered as the reference, relative to the start frame (0 = the start frame)",
        default=0,
    )
    reference_image: StringProperty(  # type: ignore[valid-type]
        name="Image", description="Reference image file", subtype="FILE_PATH", default=""
    )
    prompt: StringProperty(  # type: ignore[valid-type]
        name="Prompt", description="Optional text describing the video", default=""
    )
    seed: IntProperty(name="Seed", description="Random seed", default=0, min=0)  # type: ignore[valid-type]
    steps: IntProperty(  # type: ignore[valid-type]
        name="Steps", description="Denoising steps", default=20, min=1, max=200
    )
    guidance: FloatProperty(  # type: ignore[valid-type]
        name="Guidance", description="Classifier-free guidance scale", default=5.0, min=0.0, max=30.0
    )
    lora: EnumProperty(  # type: ignore[valid-type]
        name="LoRA", description="LoRA adapter served by the backend", items=_lora_items
    )
    lora_scale: FloatProperty(  # type: ignore[valid-type]
        name="Strength",
        description="How strongly the LoRA acts (1 = as trained)",
        default=1.0,
        min=-10.0,
        max=10.0,
    )
    step_cache: EnumProperty(  # type: ignore[valid-type]
        name="Step cache",
        description="Skip work on denoising steps whose output barely changes (faster, slightly different)",
        items=[
            ("SERVER", "Server default", "Whatever the backend was started with (frameprompt serve --cache)"),
            ("none", "Off", "Run every step in full"),
            (
                "first-block",
                "First-Block Cache",
                "Skip the rest of a step when its first block barely changes",
            ),
            (
                "mag",
                "MagCache",
                "Skip steps by the model's measured output magnitudes (frameprompt calibrate)",
            ),
            ("taylorseer", "TaylorSeer", "Extrapolate block outputs between fully computed steps"),
        ],
        default="SERVER",
    )
    # Last result (saved with the file so the button works after a reload).
    last_job_id: StringProperty(name="Last job", default="")  # type: ignore[valid-type]
    last_result_dir: StringProperty(name="Last result", subtype="DIR_PATH", default="")  # type: ignore[valid-type]
    last_strip: StringProperty(name="Last strip", default="")  # type: ignore[valid-type]
    last_strip_scene: StringProperty(name="Strip scene", default="")  # type: ignore[valid-type]


def _override_property(key: str) -> Any:
    """A string property standing for one keypoint's entry in the object's `frameprompt_bone_map` custom
    property: read and written through it, so the bone picks are saved with the .blend in the one place
    the exporter reads (and stay editable as JSON). Empty = automatic."""

    def get(self: Any) -> str:
        from .skeleton import bone_map_override

        try:
            return bone_map_override(self.id_data, key) or ""
        except ValueError:  # a broken custom property: the Bone Map panel shows why
            return ""

    def set(self: Any, value: str) -> None:
        from .skeleton import set_bone_map_override

        set_bone_map_override(self.id_data, key, value or None)

    what = "the bone the face points are estimated from" if key == "head" else f"the bone whose head is {key}"
    return StringProperty(
        name=key,
        description=f"Override {what} (empty = automatic); 'bone:tail' takes the bone's tail",
        get=get,
        set=set,
    )


class FRAMEPROMPT_BoneMap(bpy.types.PropertyGroup):
    """Per-keypoint bone picks of an armature object (``object.frameprompt_bones``)."""

    __annotations__ = {key: _override_property(key) for key in (*KEYPOINT_NAMES, "head")}


class FRAMEPROMPT_WindowState(bpy.types.PropertyGroup):
    """Session-only UI state (not saved): the overlay toggle, the live preview's frame."""

    show_overlay: BoolProperty(  # type: ignore[valid-type]
        name="Skeleton overlay",
        description="Draw the OpenPose skeleton the model will receive in the 3D Viewport",
        default=False,
    )
    preview_frame: IntProperty(  # type: ignore[valid-type]
        name="Preview frame",
        description="Which frame of the live preview to show (scrub through the current estimate)",
        default=0,
        min=0,
    )


CLASSES = (FRAMEPROMPT_SceneSettings, FRAMEPROMPT_BoneMap, FRAMEPROMPT_WindowState)


def register_props() -> None:
    # Blender's registration idiom: a PointerProperty assigned on the type (unknown to the stubs).
    bpy.types.Scene.frameprompt = PointerProperty(type=FRAMEPROMPT_SceneSettings)  # type: ignore[attr-defined]
    bpy.types.Object.frameprompt_bones = PointerProperty(type=FRAMEPROMPT_BoneMap)  # type: ignore[attr-defined]
    bpy.types.WindowManager.frameprompt = PointerProperty(type=FRAMEPROMPT_WindowState)  # type: ignore[attr-defined]


def unregister_props() -> None:
    del bpy.types.WindowManager.frameprompt  # type: ignore[attr-defined]
    del bpy.types.Object.frameprompt_bones  # type: ignore[attr-defined]
    del bpy.types.Scene.frameprompt  # type: ignore[attr-defined]


def effective_armature(scene: Any, settings: Any, context: Any = None) -> Any | None:
    if settings is not None and settings.armature is not None:
        return settings.armature
    obj = getattr(context or bpy.context, "active_object", None)
    if obj is not None and obj.type == "ARMATURE":
        return obj
    arms = [o for o in scene.objects if o.type == "ARMATURE"]
    return arms[0] if len(arms) == 1 else None


def effective_camera(scene: Any, settings: Any) -> Any | None:
    if settings is not None and settings.camera is not None:
        return settings.camera
    return scene.camera


def effective_start(scene: Any, settings: Any) -> int:
    return int(scene.frame_start if settings.use_scene_start else settings.frame_start)
