"""Export a job folder: reference.png, pose/0000_keypoints.json ..., skeleton/0000.png ...

Shared by the ``frameprompt.export`` / ``frameprompt.animate`` operators and the headless batch entry.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from ..core.errors import FramePromptError

# OpenPose-18 names, for messages.
KEYPOINT_NAMES = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "RHip", "RKnee",
    "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
)  # fmt: skip
# Body joints the model needs; the face points (nose, eyes, ears) may be missing.
REQUIRED_KEYPOINTS = tuple(range(1, 14))


class FramePromptUserError(FramePromptError):
    """A problem with the scene or the settings that the user can fix; the message says how."""

    code = "user_error"


@dataclass
class JobSpec:
    """Everything one animation job needs, as plain values (no bpy pointers)."""

    scene: str
    armature: str
    camera: str
    frame_start: int
    num_frames: int
    width: int
    height: int
    reference_source: str = "RENDER"  # "RENDER" | "IMAGE"
    reference_frame: int | None = None  # default: frame_start
    reference_image: str = ""
    prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 5.0
    lora: str = ""
    lora_scale: float = 1.0
    step_cache: str = ""  # "" = the server's default; else "none" or a protocol.STEP_CACHES name
    # The keypoints of the scene's own render (resolution x percentage, pixel aspect), so the skeleton
    # lines up with what the user's camera renders; width x height is that size and need not be a
    # multiple of 16 (an export for other tools; a model needs multiples of 16).
    scene_resolution: bool = False

    @property
    def frames(self) -> list[int]:
        return list(range(self.frame_start, self.frame_start + self.num_frames))

    def params(self) -> dict[str, Any]:
        """Generation parameters as the protocol's ``params`` object."""
        p: dict[str, Any] = {
            "num_frames": self.num_frames,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "guidance_scale": float(self.guidance),
            "seed": int(self.seed),
            "fps": None,
        }
        if self.prompt:
            p["prompt"] = self.prompt
        if self.lora and self.lora != "NONE":
            p["lora"] = self.lora
            if self.lora_scale != 1.0:
                p["lora_scale"] = float(self.lora_scale)
        if self.step_cache:
            p["cache"] = self.step_cache
        return {k: v for k, v in p.items() if v is not None}


@dataclass
class ExportResult:
    job_dir: Path
    reference: Path
    pose_dir: Path
    skeleton_dir: Path
    pose_files: list[Path]
    skeleton_files: list[Path]
    poses: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def spec_problems(spec: JobSpec) -> list[str]:
    """Reasons the job cannot run, each saying how to fix it (empty when it can)."""
    problems: list[str] = []
    scene = bpy.data.scenes.get(spec.scene)
    if scene is None:
        return [f"scene '{spec.scene}' not found"]
    arm = bpy.data.objects.get(spec.armature) if spec.armature else None
    if arm is None or arm.type != "ARMATURE":
        problems.append("No armature: select the character's rig or pick it in the Armature field")
    cam = bpy.data.objects.get(spec.camera) if spec.camera else None
    if cam is None or cam.type != "CAMERA":
        problems.append("No camera: add a camera to the scene (Add > Camera) or pick one in the Camera field")
    if spec.num_frames < 1:
        problems.append(f"N = {spec.num_frames} frames: animate at least 1 frame")
    if spec.scene_resolution:
        if spec.width < 1 or spec.height < 1:
            problems.append(f"Resolution {spec.width}×{spec.height}: set the scene's render resolution")
    elif spec.width % 16 or spec.height % 16 or spec.width < 16 or spec.height < 16:
        problems.append(f"Resolution {spec.width}×{spec.height}: width and height must be multiples of 16")
    if spec.reference_source == "IMAGE":
        if not spec.reference_image:
            problems.append("Reference is 'Image file' but no image is set: pick an image file")
        elif not Path(bpy.path.abspath(spec.reference_image)).is_file():
            problems.append(f"Reference image {spec.reference_image} does not exist: pick an existing file")
    return problems


def check_spec(spec: JobSpec) -> None:
    problems = spec_problems(spec)
    if problems:
        raise FramePromptUserError("; ".join(problems))


def job_name(scene_name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", scene_name).strip("_") or "scene"
    return f"{safe}_{time.strftime('%Y%m%d_%H%M%S')}"


def _check_keypoints(poses: list[Any], spec: JobSpec) -> tuple[list[str], list[str]]:
    """(errors, warnings) about keypoints that are missing in every frame. The bone map is checked before
    (every body joint has a bone), so a body joint missing everywhere is out of the camera's view."""
    import numpy as np

    if not poses:
        return ["no poses were exported"], []
    conf = np.stack([np.asarray(p.keypoints, dtype=float)[:, 2] for p in poses])  # (frames, 18)
    never = [i for i in range(conf.shape[1]) if not (conf[:, i] > 0).any()]
    missing_body = [KEYPOINT_NAMES[i] for i in never if i in REQUIRED_KEYPOINTS]
    missing_face = [KEYPOINT_NAMES[i] for i in never if i not in REQUIRED_KEYPOINTS]
    errors, warnings = [], []
    if missing_body:
        errors.append(
            ", ".join(missing_body) + f" outside the view of camera '{spec.camera}' (or behind it) in every "
            f"frame {spec.frame_start}-{spec.frames[-1]}: aim the camera at the character, or check the "
            "frame range"
        )
    if missing_face:
        warnings.append("Face keypoints not found (drawn without them): " + ", ".join(missing_face))
    return errors, warnings


def export_job(spec: JobSpec, job_dir: str | Path, *, log: Any = None) -> ExportResult:
    """Write the job folder for ``spec``. Raises :class:`FramePromptUserError` with a fix on bad input.

    Files: ``reference.png``, ``pose/0000_keypoints.json ...`` and ``skeleton/0000.png ...`` for frames
    ``frame_start .. frame_start + num_frames - 1``. Files already written are kept on error.
    """
    # deferred: skeleton loads numpy and the pose renderer
    from .skeleton import export_skeleton_frames, require_humanoid

    check_spec(spec)
    scene = bpy.data.scenes[spec.scene]
    arm = bpy.data.objects[spec.armature]
    cam = bpy.data.objects[spec.camera]
    try:
        bone_map = require_humanoid(arm)
    except ValueError as exc:  # not a humanoid, or a broken override: the message says what to fix
        raise FramePromptUserError(str(exc)) from None
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    say(f"bone map: {bone_map.label}")

    say(f"exporting {spec.num_frames} skeleton frames ({spec.frame_start}-{spec.frames[-1]}) to {job_dir}")
    # Scene resolution: None lets the projection read the scene's own render settings.
    width, height = (None, None) if spec.scene_resolution else (spec.width, spec.height)
    old_frame = scene.frame_current
    try:
        poses = list(
            export_skeleton_frames(
                scene, arm, cam, spec.frames, str(job_dir), width, height, bone_map=bone_map
            )
        )
    finally:
        scene.frame_set(old_frame)
    errors, warnings = _check_keypoints(poses, spec)
    if errors:
        raise FramePromptUserError("; ".join(errors))
    r = scene.render
    if spec.scene_resolution and r.pixel_aspect_x != r.pixel_aspect_y:
        warnings.append(
            f"the scene's pixel aspect is {r.pixel_aspect_x:g}:{r.pixel_aspect_y:g}: the keypoints follow it, "
            "the reference image is rendered with square pixels"
        )

    reference = job_dir / "reference.png"
    if spec.reference_source == "IMAGE":
        say(f"reference: image {spec.reference_image}")
        from .reference import image_reference

        image_reference(spec.reference_image, spec.width, spec.height, reference)
    else:
        ref_frame = spec.frame_start if spec.reference_frame is None else spec.reference_frame
        say(f"reference: rendering frame {ref_frame} with {scene.render.engine}")
        from .reference import render_reference

        render_reference(scene, cam, ref_frame, spec.width, spec.height, reference)

    pose_dir, skel_dir = job_dir / "pose", job_dir / "skeleton"
    pose_files = sorted(pose_dir.glob("*_keypoints.json"))
    skel_files = sorted(skel_dir.glob("*.png"))
    if len(pose_files) != spec.num_frames or len(skel_files) != spec.num_frames:
        raise RuntimeError(
            f"skeleton export wrote {len(pose_files)} pose JSON and {len(skel_files)} skeleton PNG files "
            f"for {spec.num_frames} frames in {job_dir}"
        )
    return ExportResult(job_dir, reference, pose_dir, skel_dir, pose_files, skel_files, poses, warnings)


def spec_from_scene(context: Any, scene: Any = None) -> JobSpec:
    """A :class:`JobSpec` from the panel settings (``scene.frameprompt``) with the defaults resolved."""
    from .properties import effective_armature, effective_camera, effective_start, model_output_size

    scene = scene or context.scene
    s = scene.frameprompt
    arm = effective_armature(scene, s, context)
    cam = effective_camera(scene, s)
    start = effective_start(scene, s)
    width, height = int(s.width), int(s.height)
    if s.resolution_preset == "MODEL":  # the model's size for this camera, once the backend reported it
        width, height = model_output_size(scene) or (width, height)
    return JobSpec(
        scene=scene.name,
        armature=arm.name if arm else "",
        camera=cam.name if cam else "",
        frame_start=start,
        num_frames=int(s.num_frames),
        width=width,
        height=height,
        reference_source=s.reference_source,
        reference_frame=start + int(s.reference_frame_offset),
        reference_image=s.reference_image,
        prompt=s.prompt,
        seed=int(s.seed),
        steps=int(s.steps),
        guidance=float(s.guidance),
        lora=s.lora if s.lora != "NONE" else "",
        lora_scale=float(s.lora_scale),
        step_cache="" if s.step_cache == "SERVER" else s.step_cache,
    )
