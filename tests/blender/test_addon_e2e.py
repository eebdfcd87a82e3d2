"""End to end with a real `frameprompt serve` (tiny random-weight model, loopback) and real bpy.

- synthetic inputs (a reference PNG + skeleton PNGs) through the blocking path and through the UI path
  (the timer callback driven by hand: timers never fire in background mode), cancel, backend absent;
- the demo scene through the animate operator and the batch entry.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import bpy
import numpy as np
import pytest

from frameprompt_blender.blender import jobs, sequencer
from frameprompt_blender.blender.export import ExportResult, JobSpec
from frameprompt_blender.blender.preferences import Settings

REPO = Path(__file__).resolve().parents[2]
SIZE = 32


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(path: Path, value: float) -> Path:
    img = bpy.data.images.new("fp_e2e", SIZE, SIZE)
    img.pixels[:] = np.full(SIZE * SIZE * 4, value, dtype=np.float32)
    img.filepath_raw = str(path)
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)
    return path


def _synthetic_job(tmp_path: Path, n: int = 4, steps: int = 2) -> tuple[JobSpec, ExportResult]:
    (tmp_path / "skeleton").mkdir(parents=True)
    ref = _png(tmp_path / "reference.png", 0.5)
    skels = [_png(tmp_path / "skeleton" / f"{i:04d}.png", i / n) for i in range(n)]
    spec = JobSpec(
        bpy.context.scene.name, "", "", frame_start=3, num_frames=n, width=SIZE, height=SIZE, steps=steps
    )
    return spec, ExportResult(tmp_path, ref, tmp_path / "pose", tmp_path / "skeleton", [], skels)


def _strips(scene) -> list:
    se = scene.sequence_editor
    return [] if se is None else list(sequencer.strips_all(se))


def test_blocking_animate_imports_the_strip(tiny_server, empty_scene, tmp_path):
    spec, export = _synthetic_job(tmp_path)
    m = jobs.JobManager()
    try:
        state = m.run_blocking(spec, export, Settings(server_address=tiny_server), empty_scene.name)
    finally:
        m.close_client()
    assert state.state == jobs.DONE, state.message
    strips = _strips(empty_scene)
    assert len(strips) == 1
    strip = strips[0]
    assert strip.name == state.strip
    assert sequencer.strip_range(strip) == (3, 7)
    assert len(strip.elements) == 4
    folder = Path(bpy.path.abspath(strip.directory))
    assert folder == tmp_path / "frames"
    for el in strip.elements:
        assert (folder / el.filename).is_file()
    assert strip["frameprompt_job"] == state.job_id


def test_ui_path_timer_progress_then_cancel_leaves_no_strip(tiny_server, empty_scene, tmp_path):
    spec, export = _synthetic_job(tmp_path, steps=40)
    m = jobs.JobManager()
    try:
        m.submit(spec, export, Settings(server_address=tiny_server), empty_scene.name)
        assert m.job.active
        deadline = time.monotonic() + 60
        while not m.job.job_id and time.monotonic() < deadline:
            assert m._tick() is not None  # the timer keeps itself alive while the job runs
            time.sleep(0.05)
        assert m.job.job_id, m.job.message
        m.cancel()
        assert m.job.state == jobs.CANCELLING
        while m.job.active and time.monotonic() < deadline:
            m._tick()
            time.sleep(0.05)
        assert m.job.state == jobs.CANCELLED, m.job.message
        assert "no frames were imported" in m.job.message
        assert m._tick() is None  # the timer unregisters itself once the job is over
    finally:
        m.shutdown()
    assert _strips(empty_scene) == []


def test_backend_absent_fails_within_the_timeout(addon, empty_scene, tmp_path):
    spec, export = _synthetic_job(tmp_path)
    address = f"tcp://127.0.0.1:{free_port()}"
    m = jobs.JobManager()
    t0 = time.monotonic()
    try:
        with pytest.raises(jobs.JobFailed) as info:
            m.run_blocking(
                spec, export, Settings(server_address=address, connect_timeout=1.5), empty_scene.name
            )
    finally:
        m.close_client()
    assert time.monotonic() - t0 < 10
    assert info.value.code == "server_unavailable"
    assert "no FramePrompt backend" in str(info.value) and "frameprompt serve" in str(info.value)
    assert (tmp_path / "reference.png").is_file(), "exported inputs are kept"
    assert _strips(empty_scene) == []


def test_animate_operator_headless_on_the_demo_scene(tiny_server, demo_scene, tmp_path):
    prefs = bpy.context.preferences.addons["frameprompt_blender"].preferences
    prefs.backend_mode = "REMOTE"  # the test's own server, not a local one
    old = prefs.server_address
    prefs.server_address = tiny_server
    try:
        assert bpy.ops.frameprompt.animate.poll()
        assert bpy.ops.frameprompt.animate(directory=str(tmp_path / "job")) == {"FINISHED"}
    finally:
        prefs.server_address = old
    s = demo_scene.frameprompt
    strip = sequencer.find_strip(demo_scene, s.last_strip)
    assert strip is not None
    start = demo_scene.frame_start
    assert sequencer.strip_range(strip) == (start, start + 4)
    assert len(list((tmp_path / "job" / "frames").glob("*.png"))) == 4
    assert (tmp_path / "job" / "reference.png").is_file()


def test_animate_with_the_model_size_preset_asks_the_backend_first(tiny_server, demo_scene, tmp_path):
    """A fresh scene, preset "Model size", no Test Connection: Animate learns the model's size from a
    hello before exporting; the demo's 1:1 camera at the tiny model's 96x64 native pixel count, in
    multiples of 16, is 80x80 (not the width/height fields' 64x64)."""
    from frameprompt_blender.blender.properties import backend_model_size, set_backend_model_size

    prefs = bpy.context.preferences.addons["frameprompt_blender"].preferences
    prefs.backend_mode = "REMOTE"  # the test's own server, not a local one
    old = prefs.server_address
    s = demo_scene.frameprompt
    s.resolution_preset = "MODEL"
    s.steps = 1
    set_backend_model_size(None)  # as in a fresh Blender session: no hello seen
    jobs.MANAGER.backend = {}
    prefs.server_address = tiny_server
    try:
        assert (s.width, s.height) == (64, 64)
        assert bpy.ops.frameprompt.animate.poll()
        assert bpy.ops.frameprompt.animate(directory=str(tmp_path / "job")) == {"FINISHED"}
    finally:
        prefs.server_address = old
    model = backend_model_size()
    assert model is not None and (model.native_width, model.native_height) == (96, 64)
    job = tmp_path / "job"
    paths = [
        job / "reference.png",
        *sorted((job / "skeleton").glob("*.png")),
        *sorted((job / "frames").glob("*.png")),
    ]
    assert len(paths) == 1 + 4 + 4
    for path in paths:
        img = bpy.data.images.load(str(path))
        try:
            assert tuple(img.size) == (80, 80), path
        finally:
            bpy.data.images.remove(img)


def test_animate_with_the_model_size_preset_and_no_backend_fails_before_exporting(demo_scene, tmp_path):
    from frameprompt_blender.blender.properties import set_backend_model_size

    prefs = bpy.context.preferences.addons["frameprompt_blender"].preferences
    prefs.backend_mode = "REMOTE"  # the test's own server, not a local one
    old = prefs.server_address, prefs.connect_timeout
    demo_scene.frameprompt.resolution_preset = "MODEL"
    set_backend_model_size(None)
    prefs.server_address, prefs.connect_timeout = f"tcp://127.0.0.1:{free_port()}", 1.5
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="Backend not reachable"):
            bpy.ops.frameprompt.animate(directory=str(tmp_path / "job"))
    finally:
        prefs.server_address, prefs.connect_timeout = old
        jobs.MANAGER.close_client()
    assert time.monotonic() - t0 < 10
    assert jobs.MANAGER.job.state == jobs.FAILED
    assert not (tmp_path / "job" / "reference.png").exists(), "nothing exported at a size not known"


def _batch(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "frameprompt_blender.batch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


@pytest.fixture
def demo_blend(demo_scene, tmp_path) -> Path:
    path = tmp_path / "demo.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def test_batch_entry_writes_blend_with_strip_and_mp4(tiny_server, demo_blend, tmp_path):
    out = tmp_path / "out"
    scene_name = bpy.context.scene.name
    run = _batch(
        str(demo_blend), "--server", tiny_server, "--out", str(out), "--frames", "4",
        "--width", "64", "--height", "64", "--steps", "2", "--render-mp4",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    blend = out / f"{scene_name}.blend"
    assert blend.is_file()
    assert (out / f"{scene_name}.mp4").stat().st_size > 0
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.data.scenes[scene_name]
    strips = _strips(scene)
    assert len(strips) == 1 and len(strips[0].elements) == 4
    assert strips[0].directory.startswith("//"), "frames are stored relative to the saved .blend"
    folder = Path(bpy.path.abspath(strips[0].directory))
    assert all((folder / el.filename).is_file() for el in strips[0].elements)


def test_batch_without_a_size_takes_the_models_size(tiny_server, demo_blend, tmp_path):
    """No --width/--height: the camera's aspect (the demo's 64x64 render: 1:1) at the model's native pixel
    count (96x64 = 6144: 78.4 a side), in multiples of 16: 80x80; neither the scene's 64x64 nor 96x64."""
    from frameprompt_blender.wire.client import FramePromptClient
    from frameprompt_blender.wire.protocol import ModelSize

    with FramePromptClient(tiny_server, timeout=10.0) as client:
        model = ModelSize.from_hello(client.hello())
    assert model is not None and (model.native_width, model.native_height) == (96, 64)
    out = tmp_path / "out"
    run = _batch(str(demo_blend), "--server", tiny_server, "--out", str(out), "--frames", "4",
                 "--steps", "1", "--no-save")  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "size 80x80" in run.stdout and "96x64" in run.stdout, run.stdout[-2000:]
    frames = sorted((out / "frames").glob("*.png"))
    assert len(frames) == 4
    img = bpy.data.images.load(str(frames[0]))
    try:
        assert tuple(img.size) == (80, 80)
    finally:
        bpy.data.images.remove(img)
    ref = bpy.data.images.load(str(out / "reference.png"))
    try:
        assert tuple(ref.size) == (80, 80)
    finally:
        bpy.data.images.remove(ref)


def test_batch_export_only_needs_no_server(demo_blend, tmp_path):
    out = tmp_path / "job"
    run = _batch(str(demo_blend), "--out", str(out), "--export-only", "--frames", "4", "--start", "2",
                 "--width", "64", "--height", "64")  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (out / "reference.png").is_file()
    assert sorted(p.name for p in (out / "pose").iterdir()) == [f"{i:04d}_keypoints.json" for i in range(4)]
    assert sorted(p.name for p in (out / "skeleton").iterdir()) == [f"{i:04d}.png" for i in range(4)]
    assert not list(out.glob("*.blend"))


def test_batch_without_camera_exits_non_zero_with_a_message(empty_scene, tmp_path):
    bpy.ops.object.armature_add()
    path = tmp_path / "nocam.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    run = _batch(str(path), "--out", str(tmp_path / "out"), "--server", f"tcp://127.0.0.1:{free_port()}")
    assert run.returncode != 0
    assert "has no camera" in run.stderr and "--camera" in run.stderr, run.stderr


def test_batch_bad_frame_count_exits_non_zero(empty_scene, tmp_path):
    bpy.ops.object.armature_add()
    bpy.ops.object.camera_add()
    bpy.context.scene.camera = bpy.context.active_object
    path = tmp_path / "n0.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    run = _batch(str(path), "--out", str(tmp_path / "out"), "--export-only", "--frames", "0")
    assert run.returncode != 0
    assert "at least 1 frame" in run.stderr, run.stderr
