"""The local backend: a `frameprompt serve` process the add-on starts on a free loopback port when a job
first needs it, watches (starting / loading model / ready / failed) and stops when Blender quits or the
add-on is disabled. The server also watches Blender (`--parent-pid`), so a crashed Blender leaves no
server holding the port or the GPU.

Blender's Python never imports the backend: the server runs in the Python environment where
`frameprompt` is installed (the preference, else the project's `.venv` next to this add-on's source,
else a `frameprompt` command on PATH).
"""

from __future__ import annotations

import atexit
import getpass
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .export import FramePromptUserError

STOPPED, STARTING, LOADING, READY, FAILED = "stopped", "starting", "loading model", "ready", "failed"
# The lines `frameprompt serve` prints when it has bound its address and when its model is loaded.
_LISTENING_MARK = "frameprompt: listening on"
_READY_MARK = "frameprompt: ready on"
_LOG_LINES = 12

NO_BACKEND_HINT = (
    "set Preferences > Add-ons > Animate with FramePrompt > Python environment to the environment where "
    "`pip install frameprompt` ran (its folder, its python or its `frameprompt` command), or choose "
    "'Remote address' and start `frameprompt serve` yourself"
)


def _python_in(env: Path) -> Path | None:
    for rel in ("bin/python", "bin/python3", "Scripts/python.exe", "python.exe"):
        if (env / rel).is_file():
            return env / rel
    return None


def backend_command(env_path: str = "") -> list[str]:
    """The command that runs `frameprompt` (without the verb). `env_path`: a virtual environment's folder,
    its python, or a `frameprompt` executable; empty = found automatically. Raises FramePromptUserError
    naming what was looked for and how to fix it."""
    if env_path:
        p = Path(env_path).expanduser()
        if p.is_dir():
            py = _python_in(p)
            if py is None:
                raise FramePromptUserError(
                    f"The Python environment {p} has no bin/python (or Scripts\\python.exe)",
                    NO_BACKEND_HINT,
                )
            return [str(py), "-m", "frameprompt"]
        if p.is_file():
            return [str(p)] if "frameprompt" in p.name else [str(p), "-m", "frameprompt"]
        raise FramePromptUserError(f"The Python environment {p} does not exist", NO_BACKEND_HINT)
    source_venv = Path(__file__).resolve().parents[2] / ".venv"
    py = _python_in(source_venv) if (source_venv.parent / "backend" / "frameprompt").is_dir() else None
    if py is not None:
        return [str(py), "-m", "frameprompt"]
    command = shutil.which("frameprompt")
    if command:
        return [command]
    raise FramePromptUserError(
        "No FramePrompt backend found: no project .venv next to the add-on and no `frameprompt` "
        "command on PATH",
        NO_BACKEND_HINT,
    )


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BackendOptions:
    """What the local server is started with (from the preferences)."""

    env_path: str = ""
    model: str = ""
    idle_timeout_s: float = 0.0
    extra_args: str = ""


class LocalBackend:
    """One `frameprompt serve` child process. Thread-safe; `state`, `address` and `log_tail` are what
    the panel shows."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.state = STOPPED
        self.address = ""
        self.error = ""
        self.options: BackendOptions | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: deque[str] = deque(maxlen=200)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = _LOG_LINES) -> list[str]:
        with self._lock:
            return list(self._lines)[-n:]

    def status_line(self) -> str:
        if self.state == FAILED:
            return f"Local backend: failed ({self.error})" if self.error else "Local backend: failed"
        if self.state == STOPPED:
            return "Local backend: not started (starts with the first job)"
        return f"Local backend: {self.state} · {self.address}"

    def start(self, options: BackendOptions) -> str:
        """Start the server unless it runs with these options already; returns its address at once
        (it is listening only once `state` leaves STARTING)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None and self.options == options:
                return self.address
        self.stop()
        base = backend_command(options.env_path)
        port = free_loopback_port()
        address = f"tcp://127.0.0.1:{port}"
        cmd = [*base, "serve", "--bind", address, "--parent-pid", str(os.getpid())]
        if options.model:
            cmd += ["--model", options.model]
        if options.idle_timeout_s > 0:
            cmd += ["--idle-timeout", f"{options.idle_timeout_s:g}"]
        cmd += shlex.split(options.extra_args)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                creationflags=flags,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            raise FramePromptUserError(f"Cannot start {cmd[0]}: {exc}", NO_BACKEND_HINT) from None
        with self._lock:
            self._proc, self.address, self.options = proc, address, options
            self.state, self.error = STARTING, ""
            self._lines.clear()
            self._lines.append("$ " + " ".join(shlex.quote(c) for c in cmd))
        threading.Thread(target=self._read, args=(proc,), name="frameprompt-backend-log", daemon=True).start()
        return address

    def _read(self, proc: subprocess.Popen) -> None:
        log_path = self.log_dir / "serve.log"
        with open(log_path, "w", encoding="utf-8") as log:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                with self._lock:
                    if proc is not self._proc:
                        continue
                    self._lines.append(line.rstrip())
                    if _LISTENING_MARK in line and self.state == STARTING:
                        self.state = LOADING
                    elif _READY_MARK in line:
                        self.state = READY
                    self._changed.notify_all()
            code = proc.wait()
        with self._lock:
            if proc is self._proc and self.state != STOPPED:
                self.state = FAILED
                last = next((ln for ln in reversed(self._lines) if ln.strip()), "")
                self.error = f"exit code {code}: {last}"[:300]
            self._changed.notify_all()

    def wait_listening(self, timeout: float) -> None:
        """Block until the server has bound its address (it may still be loading its model). Raises
        FramePromptUserError with the server's last log lines when it failed or took too long."""
        self._wait({LOADING, READY}, timeout, "start listening")

    def wait_ready(self, timeout: float) -> None:
        self._wait({READY}, timeout, "load its model")

    def _wait(self, states: set[str], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.state not in states:
                if self.state in (FAILED, STOPPED):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
            state = self.state
        if state in states:
            return
        tail = "\n".join(self.log_tail())
        why = self.error if state == FAILED else f"did not {what} within {timeout:g} s"
        raise FramePromptUserError(
            f"The local FramePrompt backend {why}. Its last lines:\n{tail}",
            "fix what the log says (or the Python environment in the preferences); the log is in "
            f"{self.log_dir / 'serve.log'}",
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: it marks running jobs interrupted and exits), then kill it if needed."""
        with self._lock:
            proc, self._proc = self._proc, None
            self.state = STOPPED
            self._changed.notify_all()
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def ensure_local(backend: LocalBackend, options: BackendOptions, timeout: float) -> str:
    """Start (if needed) and wait until listening; the address."""
    address = backend.start(options)
    backend.wait_listening(timeout)
    return address


def default_log_dir() -> Path:
    """Where the server's log goes (named in every error about it): per user, outside the .blend's
    folder and outside the extension's folder, which an upgrade wipes."""
    return Path(tempfile.gettempdir()) / f"frameprompt-{getpass.getuser()}" / "backend"


_BACKEND: list[LocalBackend] = []


def local_backend() -> LocalBackend:
    """The session's local backend (one per Blender process), stopped at exit."""
    if not _BACKEND:
        _BACKEND.append(LocalBackend(default_log_dir()))
        atexit.register(stop_local_backend)
    return _BACKEND[0]


def stop_local_backend() -> None:
    if _BACKEND:
        _BACKEND[0].stop()
