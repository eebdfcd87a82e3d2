"""Fixtures for the add-on tests with the real bpy module (pip install bpy).

- Blender's user folders are isolated (BLENDER_USER_RESOURCES) before bpy is imported.
- The add-on is enabled once per session through addon_utils and disabled in teardown: a class still
  registered at interpreter exit hangs bpy 4.5 forever and segfaults 4.2.
- `tiny_server` starts a real `frameprompt serve` with the lead's tiny random-weight model. The backend
  needs torch, which the bpy-4.2/5.0 venvs do not have: the server then runs with the main .venv's Python
  (FRAMEPROMPT_BACKEND_PYTHON overrides).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if "bpy" not in sys.modules:
    _user = Path(tempfile.mkdtemp(prefix="fp_blender_user_"))
    os.environ.setdefault("BLENDER_USER_RESOURCES", str(_user))

bpy = pytest.importorskip("bpy", reason="needs the bpy module (pip install 'bpy==4.5.*')")

ADDON = "frameprompt_blender"
# The tiny model's native size as `tiny_server` writes it into the model's frameprompt_training.json.
TINY_NATIVE_SIZE = {"width": 96, "height": 64}


def _disable_addon() -> None:
    import addon_utils

    if ADDON in bpy.context.preferences.addons:
        addon_utils.disable(ADDON, default_set=True)


atexit.register(_disable_addon)


@pytest.fixture(scope="session")
def addon():
    """The add-on enabled like a user would (Preferences > Add-ons), disabled at the end."""
    import addon_utils

    mod = addon_utils.enable(ADDON, default_set=True, handle_error=None)
    assert mod is not None, "addon_utils.enable failed (see the log above)"
    yield mod
    _disable_addon()


@pytest.fixture
def empty_scene(addon):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    yield scene


@pytest.fixture
def demo_scene(addon):
    """The procedural demo (humanoid mesh + armature + camera + light + action), tiny renders."""
    from frameprompt_blender.blender.demo_scene import build_demo_scene

    bpy.ops.wm.read_homefile(use_empty=True)
    build_demo_scene()
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x = scene.render.resolution_y = 64
    s = scene.frameprompt
    s.resolution_preset = "CUSTOM"
    s.width = s.height = 64
    s.num_frames = 4
    s.steps = 2
    return scene


# ---------------------------------------------------------------------------------------- the backend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_python() -> str | None:
    """A Python that can run the backend (torch + frameprompt), or None."""
    override = os.environ.get("FRAMEPROMPT_BACKEND_PYTHON")
    if override:
        return override
    if importlib.util.find_spec("frameprompt") is not None and importlib.util.find_spec("torch") is not None:
        return sys.executable
    main_venv = REPO / ".venv" / "bin" / "python"
    return str(main_venv) if main_venv.is_file() else None


def _backend_missing(py: str) -> str:
    """Why the backend cannot serve the tiny model ('' when it can)."""
    probe = (
        "import importlib.util as u, sys; "
        "missing=[m for m in ('frameprompt.testing','frameprompt.commands.serve') if u.find_spec(m) is None]; "
        "print(','.join(missing))"
    )
    out = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    if out.returncode:
        return f"backend python {py} failed: {out.stderr[-300:]}"
    missing = out.stdout.strip()
    return f"backend modules missing in that environment: {missing}" if missing else ""


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory):
    """A real `frameprompt serve` on loopback with the tiny random-weight model; yields its address."""
    py = backend_python()
    if py is None:
        pytest.skip("no Python with torch + frameprompt to run the backend (set FRAMEPROMPT_BACKEND_PYTHON)")
    why = _backend_missing(py)
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("backend")
    model = root / "model"
    build = subprocess.run(
        [py, "-c", f"from frameprompt.testing import tiny_pipeline_dir; tiny_pipeline_dir({str(model)!r})"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    if build.returncode:
        pytest.fail(f"tiny model build failed:\n{build.stderr[-2000:]}")
    # the native size the server reports in hello (`model_size`); tiny, so model-sized jobs stay fast
    (model / "frameprompt_training.json").write_text(json.dumps(TINY_NATIVE_SIZE))
    address = f"tcp://127.0.0.1:{free_port()}"
    log = open(root / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            py,
            "-m",
            "frameprompt.cli",
            "serve",
            "--model",
            str(model),
            "--bind",
            address,
            "--jobs-dir",
            str(root / "jobs"),
            "--no-fsync",
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "2", "FRAMEPROMPT_JOBS_DIR": str(root / "jobs")},
    )
    try:
        _wait_ready(address, proc, root / "server.log")
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_ready(address: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180.0) -> None:
    from frameprompt_blender.wire.client import FramePromptClient

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"frameprompt serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        client = FramePromptClient(address, timeout=2.0)
        try:
            client.hello()
            return
        except Exception as exc:
            last = exc
        finally:
            client.close()
        time.sleep(1.0)
    pytest.fail(
        f"frameprompt serve did not answer within {timeout} s ({last}):\n{log_path.read_text()[-3000:]}"
    )


# ------------------------------------------------------------------------------------- exit safety net

_exit_status = {"code": 0}


def pytest_sessionfinish(session, exitstatus):
    _exit_status["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """bpy 4.2-4.5 can hang (4.5) or segfault (4.2) at interpreter exit when anything was left registered
    (blender.md §8.1). Every report is written by now: leave with pytest's status instead of risking it.
    FRAMEPROMPT_BPY_NORMAL_EXIT=1 turns this off (to look for such leaks)."""
    if os.environ.get("FRAMEPROMPT_BPY_NORMAL_EXIT") == "1" or "bpy" not in sys.modules:
        return
    _disable_addon()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status["code"])
