"""The add-on's own backend and its memory, with real bpy and real `frameprompt serve` processes:

- from a fresh install (the preferences' defaults: local backend), Animate with no backend running
  starts one, shows live previews during the job, imports the strip, and disabling the extension
  stops the server;
- a job submitted from a saved .blend that was then closed is re-attached and imported when the file
  is opened again; one whose backend lost it is submitted again from the kept inputs;
- the batch entry without --server runs its own backend and stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import bpy
import pytest
from conftest import TINY_NATIVE_SIZE, _backend_missing, backend_python

from frameprompt_blender.blender import jobs, local_backend, sequencer

REPO = Path(__file__).resolve().parents[2]
ADDON = "frameprompt_blender"


@pytest.fixture(scope="module")
def backend_env(tmp_path_factory) -> dict[str, str]:
    """A Python with the backend and a tiny model folder: what the preferences would point at."""
    py = backend_python()
    if py is None or _backend_missing(py):
        pytest.skip("no Python with torch + frameprompt to run the backend")
    root = tmp_path_factory.mktemp("local_backend")
    model = root / "model"
    code = f"from frameprompt.testing import tiny_pipeline_dir; tiny_pipeline_dir({str(model)!r})"
    build = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert build.returncode == 0, build.stderr[-2000:]
    (model / "frameprompt_training.json").write_text(json.dumps(TINY_NATIVE_SIZE))
    return {"python": py, "model": str(model), "jobs": str(root / "jobs")}


@pytest.fixture
def prefs(addon, backend_env):
    p = bpy.context.preferences.addons[ADDON].preferences
    saved = {
        k: getattr(p, k) for k in ("backend_mode", "python_env", "local_model", "local_args", "preview_mode")
    }
    for k in ("backend_mode", "preview_mode"):  # as on a fresh install, whatever tests ran before
        p.property_unset(k)
    p.python_env = backend_env["python"]
    p.local_model = backend_env["model"]
    p.local_args = f"--jobs-dir {backend_env['jobs']} --no-fsync"
    yield p
    for k, v in saved.items():
        setattr(p, k, v)
    local_backend.stop_local_backend()


def _strips(scene) -> list:
    se = scene.sequence_editor
    return [] if se is None else list(sequencer.strips_all(se))


def test_fresh_install_animate_starts_the_backend_shows_previews_and_disable_stops_it(
    prefs, demo_scene, tmp_path
):
    import addon_utils

    assert prefs.backend_mode == "LOCAL", "a fresh install uses the local backend"
    assert prefs.preview_mode == "FAST"
    backend = local_backend.local_backend()
    assert not backend.running
    demo_scene.frameprompt.steps = 4
    assert bpy.ops.frameprompt.animate(directory=str(tmp_path / "job")) == {"FINISHED"}
    job = jobs.MANAGER.job
    assert job.state == jobs.DONE, job.message
    strip = sequencer.find_strip(demo_scene, demo_scene.frameprompt.last_strip)
    assert strip is not None
    assert len(list((tmp_path / "job" / "frames").glob("*.png"))) == 4
    # previews came during the job (before the result) and are on disk for the panel
    assert job.previews_received >= 1
    assert job.preview_frames and all(Path(p).is_file() for p in job.preview_frames)
    assert 1 <= job.preview_step <= job.preview_total
    assert backend.running and backend.state == local_backend.READY
    assert backend.address.startswith("tcp://127.0.0.1:")
    proc = backend._proc
    assert proc is not None
    # disabling the extension stops its backend
    addon_utils.disable(ADDON, default_set=True)
    try:
        assert proc.wait(20) == 0
        assert not backend.running
    finally:
        addon_utils.enable(ADDON, default_set=True, handle_error=None)


def test_animate_reports_a_backend_that_cannot_start(prefs, demo_scene, tmp_path):
    prefs.python_env = str(tmp_path / "no-such-env")
    with pytest.raises(RuntimeError, match="no-such-env"):  # the operator's ERROR report, headless
        bpy.ops.frameprompt.animate(directory=str(tmp_path / "job"))
    message = jobs.MANAGER.job.message
    assert "no-such-env" in message and "does not exist" in message
    assert "Python environment" in message  # the fix names the preference
    assert (tmp_path / "job" / "reference.png").is_file(), "the exported inputs are kept"


def test_backend_failure_shows_the_servers_last_lines(prefs, demo_scene, tmp_path):
    prefs.local_args = "--max-frames not-a-number"
    with pytest.raises(RuntimeError, match="max-frames"):
        bpy.ops.frameprompt.animate(directory=str(tmp_path / "job"))
    backend = local_backend.local_backend()
    assert backend.state == local_backend.FAILED
    assert "max-frames" in jobs.MANAGER.job.message  # argparse's own complaint, from the log
    assert any("max-frames" in line for line in backend.log_tail())


def test_job_of_a_closed_blend_is_imported_when_the_file_is_opened_again(
    addon, tiny_server, demo_scene, tmp_path
):
    p = bpy.context.preferences.addons[ADDON].preferences
    saved = p.backend_mode, p.server_address
    p.backend_mode, p.server_address = "REMOTE", tiny_server
    blend = tmp_path / "shot.blend"
    try:
        demo_scene.frameprompt.steps = 6
        bpy.ops.wm.save_as_mainfile(filepath=str(blend))
        scene_name = bpy.context.scene.name
        # what the UI does: export, submit, and let a timer follow the job
        from frameprompt_blender.blender.export import export_job, spec_from_scene
        from frameprompt_blender.blender.preferences import get_settings

        spec = spec_from_scene(bpy.context)
        export = export_job(spec, tmp_path / "job")
        jobs.MANAGER.submit(spec, export, get_settings(), scene_name)
        deadline = time.monotonic() + 30
        while not jobs.MANAGER.job.job_id and time.monotonic() < deadline:
            jobs.MANAGER._drain(block_s=0.2)
        job_id = jobs.MANAGER.job.job_id
        assert job_id, jobs.MANAGER.job.message
        listed = jobs.read_pending(str(blend))
        assert [e["job_id"] for e in listed] == [job_id]
        # the file is closed mid-run (a new file: load_pre stops following the job, it keeps running)
        bpy.ops.wm.read_homefile(use_empty=True)
        assert jobs.MANAGER.handle is None
        assert jobs.pending_path(str(blend)).is_file(), "the job is still listed next to the .blend"
        bpy.ops.wm.open_mainfile(filepath=str(blend))
        scene = bpy.data.scenes[scene_name]
        names = [s.name for s in _strips(scene)]
        assert any(job_id[:8] in n for n in names), names
        assert len(list((tmp_path / "job" / "frames").glob("*.png"))) == spec.num_frames
        assert jobs.read_pending(str(blend)) == []
        assert not jobs.pending_path(str(blend)).exists()
    finally:
        p.backend_mode, p.server_address = saved


def test_a_job_the_backend_lost_is_submitted_again_from_the_kept_inputs(
    addon, tiny_server, demo_scene, tmp_path
):
    p = bpy.context.preferences.addons[ADDON].preferences
    saved = p.backend_mode, p.server_address
    p.backend_mode, p.server_address = "REMOTE", tiny_server
    blend = tmp_path / "lost.blend"
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(blend))
        from frameprompt_blender.blender.export import export_job, spec_from_scene

        spec = spec_from_scene(bpy.context)
        export_job(spec, tmp_path / "job")
        entry = {
            "job_id": "f" * 32,  # a job this backend never saw (it was restarted with another jobs dir)
            "job_dir": str(tmp_path / "job"),
            "scene": bpy.context.scene.name,
            "frame_start": spec.frame_start,
            "num_frames": spec.num_frames,
            "params": spec.params(),
            "backend": {"mode": "REMOTE", "address": tiny_server},
        }
        jobs.pending_path(str(blend)).write_text(json.dumps({"jobs": [entry]}))
        bpy.ops.wm.open_mainfile(filepath=str(blend))
        assert jobs.MANAGER.job.state == jobs.DONE, jobs.MANAGER.job.message
        assert jobs.MANAGER.job.job_id != "f" * 32
        assert len(list((tmp_path / "job" / "frames").glob("*.png"))) == spec.num_frames
        assert jobs.read_pending(str(blend)) == []
    finally:
        p.backend_mode, p.server_address = saved


def test_batch_without_server_runs_and_stops_its_own_backend(backend_env, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "frameprompt_blender.batch", "--demo-scene", "--out", str(out),
        "--frames", "4", "--width", "32", "--height", "32", "--steps", "2", "--previews", "fast",
        "--backend-python", backend_env["python"], "--backend-model", backend_env["model"],
        "--backend-args", f"--jobs-dir {backend_env['jobs']} --no-fsync",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    assert len(list((out / "frames").glob("*.png"))) == 4
    assert list((out / "previews").glob("*.png"))
    # the server it started is gone: nothing listens on its port any more
    line = next(ln for ln in run.stdout.splitlines() if "submitting" in ln and "tcp://" in ln)
    address = line.split(" to ")[-1].strip()
    from frameprompt_blender.wire.client import FramePromptClient, ServerUnavailable

    with FramePromptClient(address, timeout=1.0) as client, pytest.raises(ServerUnavailable):
        client.hello()
