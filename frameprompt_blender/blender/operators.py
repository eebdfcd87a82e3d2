"""Operators: ``frameprompt.export``, ``.animate``, ``.cancel``, ``.test_connection``, ``.release_model``,
``.show_result``,
``.toggle_overlay``, ``.import_mocap``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty

from .export import FramePromptUserError, export_job, job_name, spec_from_scene, spec_problems
from .jobs import MANAGER, JobFailed
from .preferences import get_settings, resolve_output_dir
from .sequencer import sequencer_scene


def _job_dir(context: Any, directory: str = "") -> Path:
    if directory:
        return Path(bpy.path.abspath(directory))
    return resolve_output_dir(get_settings(context).output_dir) / job_name(context.scene.name)


def _spec_reason(context: Any) -> str:
    if getattr(context.scene, "frameprompt", None) is None:
        return "FramePrompt settings missing: re-enable the add-on"
    problems = spec_problems(spec_from_scene(context))
    return problems[0] if problems else ""


class _JobFolder:
    """Mixin: the job folder that export and animate write to (Blender collects mixin properties)."""

    directory: StringProperty(  # type: ignore[valid-type]
        name="Folder",
        description="Job folder (empty = a new folder in the output folder)",
        subtype="DIR_PATH",
    )


class FRAMEPROMPT_OT_export(_JobFolder, bpy.types.Operator):
    """Write the job folder: reference.png, pose/*_keypoints.json (OpenPose) and skeleton/*.png"""

    bl_idname = "frameprompt.export"
    bl_label = "Export Inputs"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        reason = _spec_reason(context)
        if reason:
            cls.poll_message_set(reason)
            return False
        return True

    def execute(self, context: Any) -> set[str]:
        spec = spec_from_scene(context)
        job_dir = _job_dir(context, self.directory)
        try:
            result = export_job(spec, job_dir, log=print if bpy.app.background else None)
        except FramePromptUserError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except Exception as exc:
            self.report({"ERROR"}, f"Export failed: {exc} (files written so far are in {job_dir})")
            return {"CANCELLED"}
        for w in result.warnings:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, f"Exported {spec.num_frames} frames to {job_dir}")
        return {"FINISHED"}


class FRAMEPROMPT_OT_animate(_JobFolder, bpy.types.Operator):
    """Export the inputs, send them to the FramePrompt backend and import the generated frames into the
    Sequencer"""

    bl_idname = "frameprompt.animate"
    bl_label = "Animate"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        if MANAGER.job.active:
            cls.poll_message_set("A job is running: wait for it or press Cancel")
            return False
        reason = _spec_reason(context)
        if reason:
            cls.poll_message_set(reason)
            return False
        return True

    def execute(self, context: Any) -> set[str]:
        settings = get_settings(context)
        job_dir = _job_dir(context, self.directory)
        strip_scene = sequencer_scene(context).name
        try:
            from .jobs import check_online_access

            if settings.backend_mode != "LOCAL":
                check_online_access(settings.server_address)
            if context.scene.frameprompt.resolution_preset == "MODEL":
                # the size comes from the server's model: learn it before exporting (no Test Connection
                # needed); a backend that reports none leaves the width/height fields
                MANAGER.ensure_model_size(settings)
            spec = spec_from_scene(context)
            export = export_job(spec, job_dir, log=print if bpy.app.background else None)
        except (FramePromptUserError, JobFailed) as exc:
            MANAGER._fail(exc, settings.server_address)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except Exception as exc:
            MANAGER._fail(exc, settings.server_address)
            self.report({"ERROR"}, f"Export failed: {exc} (files written so far are in {job_dir})")
            return {"CANCELLED"}
        for w in export.warnings:
            self.report({"WARNING"}, w)
        try:
            if bpy.app.background:
                # No event loop in background mode: timers never fire, so wait here.
                state = MANAGER.run_blocking(spec, export, settings, strip_scene)
                self.report({"INFO"}, state.message)
            else:
                MANAGER.submit(spec, export, settings, strip_scene)
                self.report({"INFO"}, f"Submitted {spec.num_frames} frames; inputs in {job_dir}")
        except (JobFailed, FramePromptUserError) as exc:
            MANAGER.job.state = MANAGER.job.state if MANAGER.job.state != "idle" else "failed"
            self.report({"ERROR"}, f"{MANAGER.job.message or exc} (inputs kept in {job_dir})")
            return {"CANCELLED"}
        except Exception as exc:
            self.report({"ERROR"}, f"{MANAGER.job.message or exc} (inputs kept in {job_dir})")
            return {"CANCELLED"}
        return {"FINISHED"}


class FRAMEPROMPT_OT_cancel(bpy.types.Operator):
    """Cancel the running FramePrompt job (nothing is imported)"""

    bl_idname = "frameprompt.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        if not MANAGER.job.active:
            cls.poll_message_set("No job is running")
            return False
        return True

    def execute(self, context: Any) -> set[str]:
        MANAGER.cancel()
        self.report({"INFO"}, "Cancelling the FramePrompt job")
        return {"FINISHED"}


class FRAMEPROMPT_OT_test_connection(bpy.types.Operator):
    """Ask the backend who it is (model, device, LoRAs) and report whether it answers"""

    bl_idname = "frameprompt.test_connection"
    bl_label = "Test Connection"
    bl_options = {"REGISTER"}

    def execute(self, context: Any) -> set[str]:
        settings = get_settings(context)
        try:
            if not bpy.app.background:
                MANAGER.test_connection_async(settings)
                self.report({"INFO"}, f"Asking the backend at {settings.server_address}...")
                return {"FINISHED"}
            MANAGER.test_connection(settings)
        except (JobFailed, FramePromptUserError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except Exception as exc:
            self.report({"ERROR"}, f"Backend test failed: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, MANAGER.backend_status_line())
        return {"FINISHED"}


class FRAMEPROMPT_OT_release_model(bpy.types.Operator):
    """Make the backend free its model's memory (GPU or RAM) for Cycles or another program; the next job
    loads the model again"""

    bl_idname = "frameprompt.release_model"
    bl_label = "Free Model Memory"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        if MANAGER.job.active:
            cls.poll_message_set("A job is running: the model is in use")
            return False
        return True

    def execute(self, context: Any) -> set[str]:
        try:
            answer = MANAGER.release_model(get_settings(context))
        except (JobFailed, FramePromptUserError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if not answer.get("workers"):
            self.report({"INFO"}, "The local backend is not running: no model is loaded")
        else:
            self.report({"INFO"}, "The backend frees its model; the next job loads it again")
        return {"FINISHED"}


class FRAMEPROMPT_OT_show_result(bpy.types.Operator):
    """Select the last result's strip in the Sequencer and move the playhead to it"""

    bl_idname = "frameprompt.show_result"
    bl_label = "Show in Sequencer"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        s = getattr(context.scene, "frameprompt", None)
        if s is None or not s.last_strip:
            cls.poll_message_set("No result yet: press Animate first")
            return False
        return True

    def execute(self, context: Any) -> set[str]:
        from .sequencer import show_in_sequencer

        s = context.scene.frameprompt
        scene = bpy.data.scenes.get(s.last_strip_scene) or context.scene
        if not show_in_sequencer(context, scene, s.last_strip):
            self.report({"ERROR"}, f"Strip '{s.last_strip}' is gone; the frames are in {s.last_result_dir}")
            return {"CANCELLED"}
        return {"FINISHED"}


class FRAMEPROMPT_OT_toggle_overlay(bpy.types.Operator):
    """Show or hide the projected OpenPose skeleton (what the model will receive) in the 3D Viewport"""

    bl_idname = "frameprompt.toggle_overlay"
    bl_label = "Skeleton Overlay"
    bl_options = {"REGISTER"}

    def execute(self, context: Any) -> set[str]:
        from . import overlay

        wm_state = context.window_manager.frameprompt
        wm_state.show_overlay = not wm_state.show_overlay
        if wm_state.show_overlay:
            overlay.enable()
        else:
            overlay.disable()
        for area in getattr(context.screen, "areas", []) if context.screen else []:
            if area.type == "VIEW_3D":
                area.tag_redraw()
        return {"FINISHED"}


class FRAMEPROMPT_OT_import_mocap(bpy.types.Operator):
    """Import a motion-capture clip (.bvh or .fbx) with Blender's importer, as a new armature or onto the
    FramePrompt armature, and set the scene's frame range to the clip"""

    bl_idname = "frameprompt.import_mocap"
    bl_label = "Import Motion Capture"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="File", subtype="FILE_PATH")  # type: ignore[valid-type]
    filter_glob: StringProperty(default="*.bvh;*.fbx", options={"HIDDEN"})  # type: ignore[valid-type]
    onto_armature: BoolProperty(  # type: ignore[valid-type]
        name="Onto the armature",
        description="Put the clip's animation onto the FramePrompt armature instead of importing the clip's "
        "own armature: as it is when the armature has the bones the clip animates, else retargeted onto it "
        "(bones paired by their role in the body, limbs aimed as in the clip)",
        default=False,
    )
    scale: FloatProperty(  # type: ignore[valid-type]
        name="Scale", description="The importer's scale (BVH in centimetres: 0.01)", default=1.0, min=1e-6
    )

    def invoke(self, context: Any, event: Any) -> set[str]:
        if bpy.app.background:  # no file browser without a window
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: Any) -> set[str]:
        from .mocap import import_mocap
        from .properties import effective_armature

        scene = context.scene
        onto = effective_armature(scene, scene.frameprompt, context) if self.onto_armature else None
        if self.onto_armature and onto is None:
            self.report({"ERROR"}, "No armature to put the clip onto: pick one in the Armature field")
            return {"CANCELLED"}
        try:
            arm = import_mocap(self.filepath, scene, onto=onto, scale=self.scale)
        except FramePromptUserError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        scene.frameprompt.armature = arm
        self.report({"INFO"}, f"'{arm.name}' plays frames {scene.frame_start}-{scene.frame_end}")
        return {"FINISHED"}


CLASSES = (
    FRAMEPROMPT_OT_export,
    FRAMEPROMPT_OT_animate,
    FRAMEPROMPT_OT_cancel,
    FRAMEPROMPT_OT_test_connection,
    FRAMEPROMPT_OT_release_model,
    FRAMEPROMPT_OT_show_result,
    FRAMEPROMPT_OT_toggle_overlay,
    FRAMEPROMPT_OT_import_mocap,
)
