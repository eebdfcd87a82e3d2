"""The N-panel: 3D Viewport sidebar, tab "FramePrompt", "Animate with FramePrompt"."""

from __future__ import annotations

from typing import Any

import bpy

from ..core.bone_maps import BoneMapReport
from ..core.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from .jobs import CANCELLED, DONE, FAILED, MANAGER, JobState

_RESULT_ICONS = {DONE: "CHECKMARK", FAILED: "ERROR", CANCELLED: "CANCEL"}


class FRAMEPROMPT_PT_animate(bpy.types.Panel):
    bl_idname = "FRAMEPROMPT_PT_animate"
    bl_label = "Animate with FramePrompt"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FramePrompt"

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        scene = context.scene
        settings = getattr(scene, "frameprompt", None)
        if settings is None:
            layout.label(text="Settings missing: re-enable the add-on", icon="ERROR")
            return

        _draw_subject(layout, context, scene, settings)
        _draw_frames(layout, scene, settings)
        _draw_resolution(layout, scene, settings)
        _draw_reference(layout, settings)
        _draw_generation(layout, settings)
        _draw_backend(layout, context)
        _draw_problems(layout, context)
        _draw_actions(layout, context)
        _draw_job(layout, context, MANAGER.job)
        _draw_last_result(layout, settings)


class FRAMEPROMPT_PT_bone_map(bpy.types.Panel):
    """Which bone gives each keypoint: the automatic choice, and a bone picker to override it."""

    bl_idname = "FRAMEPROMPT_PT_bone_map"
    bl_label = "Bone Map"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FramePrompt"
    bl_parent_id = "FRAMEPROMPT_PT_animate"
    bl_options = {"DEFAULT_CLOSED"}  # closed, the map is not resolved on every redraw

    def draw(self, context: Any) -> None:
        _draw_bone_map(self.layout, context)


# Module functions rather than Panel methods: the tests call ``draw`` with a mock as ``self`` to record
# the layout calls, and methods looked up on that mock would silently draw nothing.


def _draw_subject(layout: Any, context: Any, scene: Any, settings: Any) -> None:
    """Armature and camera; when left empty, the object the export will fall back to."""
    from .properties import effective_armature, effective_camera

    col = layout.column(align=True)
    row = col.row(align=True)
    row.prop(settings, "armature")
    row.operator("frameprompt.import_mocap", text="", icon="IMPORT")
    arm = effective_armature(scene, settings, context)
    if settings.armature is None:
        col.label(text=f"Using: {arm.name}" if arm else "No armature selected", icon="ARMATURE_DATA")
    col.prop(settings, "camera")
    cam = effective_camera(scene, settings)
    if settings.camera is None:
        col.label(text=f"Using: {cam.name}" if cam else "Scene has no camera", icon="CAMERA_DATA")


def _draw_frames(layout: Any, scene: Any, settings: Any) -> None:
    from .properties import effective_start

    col = layout.column(align=True)
    col.prop(settings, "use_scene_start")
    sub = col.column(align=True)
    sub.enabled = not settings.use_scene_start
    sub.prop(settings, "frame_start")
    col.prop(settings, "num_frames")
    start = effective_start(scene, settings)
    col.label(text=f"Frames {start}–{start + settings.num_frames - 1}", icon="TIME")


def _draw_resolution(layout: Any, scene: Any, settings: Any) -> None:
    from .properties import backend_model_size, model_output_size

    col = layout.column(align=True)
    col.prop(settings, "resolution_preset")
    model = backend_model_size()
    size = model_output_size(scene, model) if settings.resolution_preset == "MODEL" else None
    if size is not None and model is not None:
        # the size the job will have, before it starts: the camera's aspect at the model's pixel count
        col.label(text=f"Model size {size[0]}×{size[1]}", icon="CHECKMARK")
        col.label(
            text=f"Native {model.native_width}×{model.native_height}, at most "
            f"{model.max_width}×{model.max_height}"
        )
        return
    sub = col.column(align=True)
    sub.enabled = settings.resolution_preset == "CUSTOM"
    sub.prop(settings, "width")
    sub.prop(settings, "height")
    if settings.resolution_preset == "MODEL":
        col.label(text="Model size: Test Connection to read it; until then the size above", icon="INFO")
    if model is not None:
        col.label(
            text=f"Model native {model.native_width}×{model.native_height}, at most "
            f"{model.max_width}×{model.max_height}"
        )
        return
    caps = MANAGER.backend.get("limits") if MANAGER.backend else None
    if caps:
        col.label(text=f"Backend max {caps.get('max_width', '?')}×{caps.get('max_height', '?')}")


def _draw_reference(layout: Any, settings: Any) -> None:
    col = layout.column(align=True)
    col.prop(settings, "reference_source")
    if settings.reference_source == "IMAGE":
        col.prop(settings, "reference_image")
    else:
        col.prop(settings, "reference_frame_offset")


def _draw_generation(layout: Any, settings: Any) -> None:
    col = layout.column(align=True)
    col.prop(settings, "prompt")
    col.prop(settings, "seed")
    col.prop(settings, "steps")
    col.prop(settings, "guidance")
    col.prop(settings, "step_cache")
    col.prop(settings, "lora")
    if settings.lora != "NONE":
        col.prop(settings, "lora_scale")


def _draw_backend(layout: Any, context: Any) -> None:
    from .preferences import get_settings

    box = layout.box()
    row = box.row()
    row.label(text=MANAGER.backend_status_line(), icon="LINKED" if MANAGER.backend else "UNLINKED")
    row.operator("frameprompt.test_connection", text="", icon="FILE_REFRESH")
    row.operator("frameprompt.release_model", text="", icon="TRASH")
    if get_settings(context).backend_mode == "LOCAL":
        from .local_backend import FAILED as BACKEND_FAILED
        from .local_backend import local_backend

        backend = local_backend()
        failed = backend.state == BACKEND_FAILED
        box.label(text=backend.status_line()[:120], icon="ERROR" if failed else "CONSOLE")
        if failed:  # the server's own last words say what to fix
            for line in backend.log_tail(4):
                box.label(text=line[:120])
    if MANAGER.backend_error:
        box.label(text=MANAGER.backend_error[:120], icon="ERROR")


def _draw_problems(layout: Any, context: Any) -> None:
    """Why Animate is greyed out, every reason: its poll message shows only the first, in a tooltip."""
    from .export import spec_from_scene, spec_problems

    for problem in spec_problems(spec_from_scene(context)):
        layout.label(text=problem, icon="ERROR")


def _draw_actions(layout: Any, context: Any) -> None:
    row = layout.row(align=True)
    row.scale_y = 1.4
    row.operator("frameprompt.animate", icon="RENDER_ANIMATION")
    row = layout.row(align=True)
    row.operator("frameprompt.export", icon="EXPORT")
    wm_state = getattr(context.window_manager, "frameprompt", None)
    if wm_state is not None:
        row.operator(
            "frameprompt.toggle_overlay",
            icon="HIDE_OFF" if wm_state.show_overlay else "HIDE_ON",
            depress=wm_state.show_overlay,
        )


def _draw_job(layout: Any, context: Any, job: JobState) -> None:
    """Progress, the live preview and Cancel while a job runs, else the outcome of the last one (nothing
    before the first)."""
    if job.active:
        box = layout.box()
        box.progress(text=job.progress_text(), factor=job.factor, type="BAR")
        _draw_preview(box, context, job)
        box.operator("frameprompt.cancel", icon="CANCEL")
    elif job.state in _RESULT_ICONS:
        icon = _RESULT_ICONS[job.state]
        box = layout.box()
        for i, line in enumerate(_wrap(job.message, 60)):
            box.label(text=line, icon=icon if i == 0 else "BLANK1")
        if job.state == FAILED and job.job_dir:
            box.label(text=f"Inputs kept in {job.job_dir}"[:120], icon="FILE_FOLDER")


def _draw_preview(layout: Any, context: Any, job: JobState) -> None:
    from . import previews

    wm_state = getattr(context.window_manager, "frameprompt", None)
    frame = wm_state.preview_frame if wm_state is not None else 0
    icon = previews.icon_id(job, frame)
    if not icon:
        return
    layout.label(text=f"Preview after step {job.preview_step}/{job.preview_total}")
    layout.template_icon(icon_value=icon, scale=8.0)
    if wm_state is not None and len(job.preview_frames) > 1:
        row = layout.row()
        row.prop(wm_state, "preview_frame", text=f"Frame (of {len(job.preview_frames)})", slider=True)


def _draw_last_result(layout: Any, settings: Any) -> None:
    if settings.last_strip:
        box = layout.box()
        box.label(text=f"Last result: {settings.last_strip}", icon="SEQUENCE")
        box.operator("frameprompt.show_result", icon="SEQ_SEQUENCER")


def _draw_bone_map(layout: Any, context: Any) -> None:
    """One row per keypoint (and the head bone): a bone picker writing the armature's override, and what
    the automatic map gives it; above them, the map's verdict."""
    from .properties import effective_armature
    from .skeleton import resolve_bone_map

    scene = context.scene
    settings = getattr(scene, "frameprompt", None)
    arm = effective_armature(scene, settings, context) if settings is not None else None
    if arm is None:
        layout.label(text="No armature: pick one above", icon="ERROR")
        return
    try:
        report = resolve_bone_map(arm)
        icon = "CHECKMARK" if report.ok else "ERROR"
        layout.label(text=f"{report.label}: {len(report.mapped)}/{NUM_KEYPOINTS}", icon=icon)
        if not report.ok:
            layout.label(text="Pick a bone for each missing body joint", icon="INFO")
    except ValueError as exc:  # an override names no bone, or the custom property is not JSON
        for i, line in enumerate(_wrap(str(exc), 60)):
            layout.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
    auto = resolve_bone_map(arm, {})  # what each row gets with its field empty
    col = layout.column(align=True)
    for i, key in enumerate((*KEYPOINT_NAMES, "head")):
        split = col.split(factor=0.6, align=True)
        split.prop_search(arm.frameprompt_bones, key, arm.data, "bones", text=key)
        split.label(text=_auto_label(auto, i))


def _auto_label(report: BoneMapReport, i: int) -> str:
    """The automatic source of keypoint i (i = NUM_KEYPOINTS: the head bone), short enough for the sidebar."""
    if i == NUM_KEYPOINTS:
        return f"auto: {report.head_bone}" if report.head_bone else "auto: none"
    if i in report.joints:
        return f"auto: {report.joints[i].name}" + (" (guessed)" if i in report.guessed else "")
    if i in report.estimated:
        return "auto: from the head"
    return "auto: mid-shoulders" if i in report.computed else "auto: MISSING"


def _wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap: a panel label does not wrap by itself."""
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        lines.append(line)
    return lines or [""]


CLASSES = (FRAMEPROMPT_PT_animate, FRAMEPROMPT_PT_bone_map)
