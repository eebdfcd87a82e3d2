"""The add-on in a real bpy: registration, panel, poll reasons, export, Sequencer import, overlay maths."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import bpy
import numpy as np
import pytest

from frameprompt_blender.blender import jobs, sequencer
from frameprompt_blender.blender.export import JobSpec, spec_from_scene, spec_problems

OPERATORS = (
    "export",
    "animate",
    "cancel",
    "test_connection",
    "show_result",
    "toggle_overlay",
    "import_mocap",
)


def _write_pngs(folder: Path, n: int, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = bpy.data.images.new(f"fp_test_{i}", size, size)
        img.pixels[:] = np.full(size * size * 4, (i + 1) / (n + 1), dtype=np.float32)
        p = folder / f"{i:04d}.png"
        img.filepath_raw = str(p)
        img.file_format = "PNG"
        img.save()
        bpy.data.images.remove(img)
        paths.append(p)
    return paths


def test_register_exposes_operators_panel_and_preferences(addon):
    for name in OPERATORS:
        assert hasattr(bpy.ops.frameprompt, name), name
    assert hasattr(bpy.types, "FRAMEPROMPT_PT_animate")
    assert bpy.types.FRAMEPROMPT_PT_bone_map.bl_parent_id == "FRAMEPROMPT_PT_animate"
    panel = bpy.types.FRAMEPROMPT_PT_animate
    assert panel.bl_category == "FramePrompt"
    assert panel.bl_label == "Animate with FramePrompt"
    assert panel.bl_space_type == "VIEW_3D" and panel.bl_region_type == "UI"
    prefs = bpy.context.preferences.addons["frameprompt_blender"].preferences
    assert prefs.server_address == "tcp://127.0.0.1:5555"
    assert prefs.output_dir == "//frameprompt/"
    assert prefs.keep_inputs is True
    assert hasattr(bpy.context.scene, "frameprompt")


def test_unregister_and_register_again_is_clean(addon):
    import frameprompt_blender

    frameprompt_blender.unregister()
    try:
        assert not hasattr(bpy.types, "FRAMEPROMPT_PT_animate")
        assert not hasattr(bpy.types, "FRAMEPROMPT_PT_bone_map")
        assert not hasattr(bpy.types.Scene, "frameprompt")
        assert not hasattr(bpy.types.Object, "frameprompt_bones")
        assert not any(
            getattr(h, "__module__", "").startswith("frameprompt") for h in bpy.app.handlers.load_pre
        )
    finally:
        frameprompt_blender.register()
    assert hasattr(bpy.types, "FRAMEPROMPT_PT_animate")


def test_poll_reasons_on_an_empty_scene(empty_scene):
    assert not bpy.ops.frameprompt.animate.poll()
    assert not bpy.ops.frameprompt.export.poll()
    assert not bpy.ops.frameprompt.cancel.poll()
    assert not bpy.ops.frameprompt.show_result.poll()
    problems = spec_problems(spec_from_scene(bpy.context))
    assert any("No armature" in p for p in problems)
    assert any("No camera" in p for p in problems)


def test_spec_problems_name_the_fix(empty_scene):
    bpy.ops.object.armature_add()
    bpy.ops.object.camera_add()
    scene = empty_scene
    scene.camera = bpy.context.active_object
    arm = next(o for o in scene.objects if o.type == "ARMATURE")
    spec = JobSpec(scene.name, arm.name, scene.camera.name, frame_start=1, num_frames=0, width=64, height=60)
    problems = spec_problems(spec)
    assert any("at least 1 frame" in p for p in problems)
    assert any("multiples of 16" in p for p in problems)
    spec.num_frames, spec.height = 6, 64  # any count: the backend splits it into windows
    assert spec_problems(spec) == []
    spec.reference_source, spec.reference_image = "IMAGE", "/nonexistent/concept.png"
    assert any("does not exist" in p for p in spec_problems(spec))


def _draw_panel() -> mock.MagicMock:
    fake = mock.MagicMock()
    bpy.types.FRAMEPROMPT_PT_animate.draw(fake, bpy.context)
    return fake


def _drawn_operators(fake: mock.MagicMock) -> list[str]:
    ids = []
    for call in fake.mock_calls:
        name = call[0]
        if name.endswith("operator") and call.args:
            ids.append(call.args[0])
    return ids


def _drawn_props(fake: mock.MagicMock) -> list[str]:
    return [call.args[1] for call in fake.mock_calls if call[0].endswith(".prop") and len(call.args) > 1]


def test_panel_draws_all_fields_and_buttons(empty_scene):
    fake = _draw_panel()
    props = _drawn_props(fake)
    for p in (
        "armature",
        "camera",
        "frame_start",
        "num_frames",
        "resolution_preset",
        "width",
        "height",
        "reference_source",
        "prompt",
        "seed",
        "steps",
        "guidance",
        "step_cache",
        "lora",
    ):
        assert p in props, p
    ops = _drawn_operators(fake)
    for op in (
        "frameprompt.animate",
        "frameprompt.export",
        "frameprompt.test_connection",
        "frameprompt.toggle_overlay",
    ):
        assert op in ops, op
    assert "frameprompt.cancel" not in ops  # only while a job runs


def test_step_cache_and_lora_strength_reach_the_job_parameters(empty_scene):
    from frameprompt_blender.blender.properties import set_backend_loras
    from frameprompt_blender.wire.protocol import parse_params

    s = bpy.context.scene.frameprompt
    params = spec_from_scene(bpy.context).params()
    assert "cache" not in params and "lora" not in params  # the server's defaults
    set_backend_loras(["hero"])
    try:
        s.step_cache, s.lora, s.lora_scale = "first-block", "hero", 0.5
        params = spec_from_scene(bpy.context).params()
        assert (params["cache"], params["lora"], params["lora_scale"]) == ("first-block", "hero", 0.5)
        assert "lora_scale" in _drawn_props(_draw_panel())
        checked = parse_params(params)  # the server's own validation accepts them
        assert (checked.cache, checked.lora_scale) == ("first-block", 0.5)
    finally:
        s.lora = "NONE"
        set_backend_loras([])


def test_panel_shows_progress_and_cancel_while_a_job_runs(empty_scene):
    saved = jobs.MANAGER.job
    jobs.MANAGER.job = jobs.JobState(state=jobs.RUNNING, phase="denoising", step=3, total=10, eta_s=75.0)
    try:
        fake = _draw_panel()
        progress = [c for c in fake.mock_calls if c[0].endswith("progress")]
        assert progress, "layout.progress not called"
        assert progress[0].kwargs["factor"] == pytest.approx(0.3)
        assert "3/10" in progress[0].kwargs["text"] and "ETA 1:15" in progress[0].kwargs["text"]
        assert "frameprompt.cancel" in _drawn_operators(fake)
        assert bpy.ops.frameprompt.cancel.poll()
        assert not bpy.ops.frameprompt.animate.poll()
    finally:
        jobs.MANAGER.job = saved


def test_online_access_blocks_remote_addresses(monkeypatch):
    from frameprompt_blender.blender.export import FramePromptUserError

    jobs.check_online_access("tcp://127.0.0.1:5555")
    jobs.check_online_access("tcp://localhost:5555")
    if not bpy.app.online_access:
        with pytest.raises(FramePromptUserError, match="Allow Online Access"):
            jobs.check_online_access("tcp://10.1.2.3:5555")


@pytest.mark.parametrize("saved", [False, True])
def test_sequencer_import_on_first_free_channel(empty_scene, tmp_path, saved):
    if saved:
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    scene = bpy.context.scene
    paths = _write_pngs(tmp_path / "frames", 8)
    strip = sequencer.import_image_sequence(scene, paths, name="FramePrompt job1", frame_start=5)
    assert strip.channel == 1
    assert sequencer.strip_range(strip) == (5, 13)
    assert len(strip.elements) == 8
    assert Path(bpy.path.abspath(strip.directory)).resolve() == (tmp_path / "frames").resolve()
    if saved:
        assert strip.directory.startswith("//")
    second = sequencer.import_image_sequence(scene, paths[:4], name="FramePrompt job2", frame_start=9)
    assert second.channel == 2  # overlaps the first strip
    third = sequencer.import_image_sequence(scene, paths[:4], name="FramePrompt job3", frame_start=20)
    assert third.channel == 1
    se = scene.sequence_editor
    assert {s.name for s in sequencer.strips_all(se)} == {
        "FramePrompt job1",
        "FramePrompt job2",
        "FramePrompt job3",
    }
    if bpy.app.version >= (5, 0, 0):
        assert not hasattr(se, "sequences")
    if bpy.app.version < (4, 4, 0):
        assert not hasattr(se, "strips")


def test_result_event_writes_frames_and_imports_a_strip(empty_scene, tmp_path):
    """The job manager's result path with real bpy (the transport is exercised by the e2e tests)."""
    png = (_write_pngs(tmp_path / "src", 1, size=8)[0]).read_bytes()
    m = jobs.JobManager()
    m.job = jobs.JobState(
        state=jobs.RUNNING, job_dir=str(tmp_path / "job"), scene=bpy.context.scene.name, frame_start=3
    )
    m.handle_event({"type": "result", "job_id": "abc123", "parts": [png] * 4})
    assert m.job.state == jobs.DONE, m.job.message
    strip = sequencer.find_strip(bpy.context.scene, m.job.strip)
    assert strip is not None and sequencer.strip_range(strip) == (3, 7)
    assert all(Path(p).is_file() for p in m.job.frames)
    s = bpy.context.scene.frameprompt
    assert s.last_strip == strip.name and s.last_job_id == "abc123"
    assert bpy.ops.frameprompt.show_result.poll()
    assert bpy.ops.frameprompt.show_result() == {"FINISHED"}


def test_cancelled_job_leaves_no_strip(empty_scene, tmp_path):
    m = jobs.JobManager()
    m.job = jobs.JobState(
        state=jobs.RUNNING, job_id="j1", job_dir=str(tmp_path), scene=bpy.context.scene.name
    )
    m._cancel_requested = True
    m.job.state = jobs.CANCELLING
    m.handle_event({"type": "error", "job_id": "j1", "code": "cancelled", "message": "cancelled"})
    assert m.job.state == jobs.CANCELLED
    assert "no frames were imported" in m.job.message
    se = bpy.context.scene.sequence_editor
    assert se is None or len(sequencer.strips_all(se)) == 0


def test_backend_error_is_reported_with_its_hint(empty_scene, tmp_path):
    m = jobs.JobManager()
    m.job = jobs.JobState(
        state=jobs.RUNNING, job_id="j1", job_dir=str(tmp_path), scene=bpy.context.scene.name
    )
    m.handle_event(
        {
            "type": "error",
            "job_id": "j1",
            "code": "out_of_memory",
            "message": "CUDA OOM",
            "hint": "animate fewer frames",
        }
    )
    assert m.job.state == jobs.FAILED and m.job.error_code == "out_of_memory"
    assert "Fix: animate fewer frames" in m.job.message


def test_overlay_unprojects_onto_the_camera_ray(empty_scene):
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    from frameprompt_blender.blender.overlay import camera_ray_point

    scene = empty_scene
    cam_data = bpy.data.cameras.new("cam")
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    cam.location = (-2.83, -2.83, 1.0)
    cam.rotation_euler = (np.radians(90), 0.0, np.radians(-45))
    scene.render.resolution_x, scene.render.resolution_y = 64, 96
    bpy.context.view_layer.update()
    w, h = 64, 96
    for point in (Vector((0.0, 0.0, 1.0)), Vector((0.3, -0.2, 1.5)), Vector((-0.4, 0.1, 0.2))):
        ndc = world_to_camera_view(scene, cam, point)
        px, py = ndc.x * w, (1 - ndc.y) * h
        back = camera_ray_point(scene, cam, px, py, ndc.z, w, h)
        assert (back - point).length < 1e-4, (point, back)


def test_export_operator_writes_the_job_folder(demo_scene, tmp_path):
    out = tmp_path / "job"
    assert bpy.ops.frameprompt.export.poll(), spec_problems(spec_from_scene(bpy.context))
    assert bpy.ops.frameprompt.export(directory=str(out)) == {"FINISHED"}
    ref = bpy.data.images.load(str(out / "reference.png"))
    assert tuple(ref.size) == (64, 64)
    bpy.data.images.remove(ref)
    poses = sorted((out / "pose").glob("*_keypoints.json"))
    skels = sorted((out / "skeleton").glob("*.png"))
    assert [p.name for p in poses] == [f"{i:04d}_keypoints.json" for i in range(4)]
    assert [p.name for p in skels] == [f"{i:04d}.png" for i in range(4)]
    doc = json.loads(poses[0].read_text())
    assert doc["canvas_width"] == 64 and doc["canvas_height"] == 64
    assert len(doc["people"][0]["pose_keypoints_2d"]) == 18 * 3


def test_export_without_camera_says_how_to_fix(demo_scene, tmp_path):
    demo_scene.camera = None
    for obj in [o for o in demo_scene.objects if o.type == "CAMERA"]:
        bpy.data.objects.remove(obj)
    assert not bpy.ops.frameprompt.export.poll()
    problems = spec_problems(spec_from_scene(bpy.context))
    assert any("No camera" in p and "Add > Camera" in p for p in problems)


def test_overlay_toggle_computes_visible_joints(demo_scene):
    from frameprompt_blender.blender import overlay

    assert bpy.ops.frameprompt.toggle_overlay() == {"FINISHED"}
    try:
        assert overlay.is_enabled()
        points = overlay._cache["points"]
        assert points is not None and len(points) == 18
        assert sum(p is not None for p in points) >= 13
    finally:
        bpy.ops.frameprompt.toggle_overlay()
    assert not overlay.is_enabled()


def _drawn_labels(fake: mock.MagicMock) -> list[str]:
    return [str(c.kwargs.get("text", "")) for c in fake.mock_calls if c[0].endswith(".label")]


def test_model_size_is_the_default_and_shown_before_the_job(empty_scene):
    """The "Model size" preset: the camera's aspect at the model's native pixel count, shown in the panel and used
    by the job; before the backend reported its model, the width and height fields."""
    from frameprompt_blender.blender import properties

    scene = empty_scene
    s = scene.frameprompt
    assert s.resolution_preset == "MODEL"
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 1920, 1080, 50
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    properties.set_backend_model_size(None)
    assert spec_from_scene(bpy.context).width == s.width  # unknown model: the fields
    assert any("Test Connection" in t for t in _drawn_labels(_draw_panel()))
    hello = {"model_size": {"native_width": 64, "native_height": 64, "max_width": 512, "max_height": 512,
                            "size_multiple": 8, "window_frames": 40}}  # fmt: skip
    try:
        jobs.MANAGER._set_backend(hello, None, "tcp://127.0.0.1:5555")  # as a hello answer does
        spec = spec_from_scene(bpy.context)
        assert (spec.width, spec.height) == (88, 48)  # 16:9 at 64x64's 4096 pixels, multiples of 8
        labels = _drawn_labels(_draw_panel())
        assert "Model size 88×48" in labels, labels
        assert any("Native 64×64" in t and "512×512" in t for t in labels), labels
        # a portrait camera turns it
        r.resolution_x, r.resolution_y = 1080, 1920
        assert (spec_from_scene(bpy.context).width, spec_from_scene(bpy.context).height) == (48, 88)
        # choosing the preset again writes the size into the fields (a start for "Custom")
        s.resolution_preset = "CUSTOM"
        s.resolution_preset = "MODEL"
        assert (s.width, s.height) == (48, 88)
    finally:
        jobs.MANAGER.backend = {}
        properties.set_backend_model_size(None)
