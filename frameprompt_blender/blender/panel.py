"""The N-panel: 3D Viewport sidebar, tab "FramePrompt", "Animate with FramePrompt"."""

from __future__ import annotations

from typing import Any

import bpy

from .jobs import CANCELLED, DONE, FAILED, MANAGER


class FRAMEPROMPT_PT_animate(bpy.types.Panel):
    bl_idname = "FRAMEPROMPT_PT_animate"
    bl_label = "Animate with FramePrompt"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FramePrompt"

    def draw(self, context: Any) -> None:
        from .export import spec_from_scene, spec_problems
        from .properties import effective_armature, effective_camera, effective_start

        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        scene = context.scene
        s = getattr(scene, "frameprompt", None)
        if s is None:
            layout.label(text="Settings missing: re-enable the add-on", icon="ERROR")
            return

        # Subject
        col = layout.column(align=True)
        col.prop(s, "armature")
        arm = effective_armature(scene, s, context)
        if s.armature is None:
            col.label(text=f"Using: {arm.name}" if arm else "No armature selected", icon="ARMATURE_DATA")
        col.prop(s, "camera")
        cam = effective_camera(scene, s)
        if s.camera is None:
            col.label(text=f"Using: {cam.name}" if cam else "Scene has no camera", icon="CAMERA_DATA")

        # Frames
        col = layout.column(align=True)
        col.prop(s, "use_scene_start")
        sub = col.column(align=True)
        sub.enabled = not s.use_scene_start
        sub.prop(s, "frame_start")
        col.prop(s, "num_frames")
        start = effective_start(scene, s)
        col.label(text=f"Frames {start}–{start + s.num_frames - 1}", icon="TIME")

        # Resolution
        col = layout.column(align=True)
        col.prop(s, "resolution_preset")
        sub = col.column(align=True)
        sub.enabled = s.resolution_preset == "CUSTOM"
        sub.prop(s, "width")
        sub.prop(s, "height")
        caps = MANAGER.backend.get("limits") if MANAGER.backend else None
        if caps:
            col.label(text=f"Backend max {caps.get('max_width', '?')}×{caps.get('max_height', '?')}")

        # Reference
        col = layout.column(align=True)
        col.prop(s, "reference_source")
        if s.reference_source == "IMAGE":
            col.prop(s, "reference_image")
        else:
            col.prop(s, "reference_frame_offset")

        # Generation
        col = layout.column(align=True)
        col.prop(s, "prompt")
        col.prop(s, "seed")
        col.prop(s, "steps")
        col.prop(s, "guidance")
        col.prop(s, "lora")

        # Backend
        box = layout.box()
        row = box.row()
        row.label(text=MANAGER.backend_status_line(), icon="LINKED" if MANAGER.backend else "UNLINKED")
        row.operator("frameprompt.test_connection", text="", icon="FILE_REFRESH")
        if MANAGER.backend_error:
            box.label(text=MANAGER.backend_error[:120], icon="ERROR")

        # Problems (why Animate is greyed out)
        problems = spec_problems(spec_from_scene(context))
        for p in problems:
            layout.label(text=p, icon="ERROR")

        # Actions
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

        # Job
        job = MANAGER.job
        if job.active:
            box = layout.box()
            box.progress(text=job.progress_text(), factor=job.factor, type="BAR")
            box.operator("frameprompt.cancel", icon="CANCEL")
        elif job.state in (DONE, FAILED, CANCELLED):
            icon = {"done": "CHECKMARK", "failed": "ERROR", "cancelled": "CANCEL"}[job.state]
            box = layout.box()
            for i, line in enumerate(_wrap(job.message, 60)):
                box.label(text=line, icon=icon if i == 0 else "BLANK1")
            if job.state == FAILED and job.job_dir:
                box.label(text=f"Inputs kept in {job.job_dir}"[:120], icon="FILE_FOLDER")

        # Last result
        if s.last_strip:
            box = layout.box()
            box.label(text=f"Last result: {s.last_strip}", icon="SEQUENCE")
            box.operator("frameprompt.show_result", icon="SEQ_SEQUENCER")


def _wrap(text: str, width: int) -> list[str]:
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


CLASSES = (FRAMEPROMPT_PT_animate,)
