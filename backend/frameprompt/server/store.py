"""The job store: one folder per job under the jobs directory, every file written atomically.

    <jobs-dir>/<job_id>/job.zip          job.json (the request: parameters, pose format, names),
                                         reference.png and pose/<name> (one per frame: PNG or OpenPose
                                         JSON); uncompressed, written once, fsynced
                        state.json       {"state", "created", "updated", "error", "num_frames", "meta"}
                        outputs/0000.png ...             only once the job is done (0000.rgb ... for
                                                         rgb8 results; state.json meta says which)

A job folder is assembled as `.tmp-<job_id>` and renamed into place, so it either exists whole or not at
all; `outputs/` is written as `outputs.tmp/` and renamed before state.json says "done"; state.json is
replaced (write temp + fsync + os.replace). After a crash, `recover()` turns queued/running jobs into
"interrupted" and removes leftovers, so nothing is silently dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frameprompt_blender.wire.protocol import (
    TERMINAL_STATES,
    SubmitRequest,
    check_job_id,
    check_name,
    output_frame_name,
)

log = logging.getLogger("frameprompt.server")
JOB_ARCHIVE = "job.zip"


def atomic_write(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a partial one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class JobRecord:
    job_id: str
    state: str
    request: dict[str, Any]
    status: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class JobStore:
    """Jobs on disk. Thread-safe: the I/O loop creates jobs and reads them, workers update state/outputs."""

    def __init__(self, root: str | Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._cache: dict[str, JobRecord] = {}

    # -- paths
    def job_dir(self, job_id: str) -> Path:
        return self.root / check_job_id(job_id)

    def outputs_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "outputs"

    # -- create / read
    def create(self, submit: SubmitRequest, job_id: str | None = None) -> JobRecord:
        """Write a new job (inputs, request, state 'queued') atomically and return its record."""
        job_id = check_job_id(job_id or uuid.uuid4().hex)
        tmp = self.root / f".tmp-{job_id}"
        tmp.mkdir(parents=True)
        try:
            request = {
                "job_id": job_id,
                "pose_format": submit.pose_format,
                "pose_names": submit.pose_names,
                "params": submit.params.to_dict(),
            }
            if submit.result_format != "png":
                request["result_format"] = submit.result_format
            if submit.preview is not None:
                request["preview"] = submit.preview
            # one uncompressed archive instead of a file per frame: an 81-frame job was 83 file creations
            # and fsyncs on the submit path; the archive is one sequential write and one fsync
            with open(tmp / JOB_ARCHIVE, "wb") as handle:
                with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
                    archive.writestr("job.json", json.dumps(request))
                    archive.writestr("reference.png", bytes(submit.reference))
                    for name, data in zip(submit.pose_names, submit.poses, strict=True):
                        archive.writestr(f"pose/{check_name(name)}", bytes(data))
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            now = time.time()
            status = {"state": "queued", "created": now, "updated": now, "num_frames": submit.num_frames}
            # not fsynced: job.zip is what makes the job durable; a state.json lost in a crash reads as
            # "queued" (see get), and recover() then marks the job interrupted, as it would anyway
            atomic_write(tmp / "state.json", json.dumps(status).encode(), fsync=False)
            os.replace(tmp, self.job_dir(job_id))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.fsync:
            _fsync_dir(self.root)
        rec = JobRecord(job_id, "queued", request, status)
        with self._lock:
            self._cache[job_id] = rec
        return rec

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None if there is no such job."""
        with self._lock:
            rec = self._cache.get(job_id)
        if rec is not None:
            return rec
        d = self.job_dir(job_id)
        try:
            with zipfile.ZipFile(d / JOB_ARCHIVE) as archive:
                request = json.loads(archive.read("job.json"))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        try:
            status = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):  # lost in a crash before its first fsync: the job never ran
            status = {"state": "queued", "num_frames": len(request.get("pose_names", []))}
        rec = JobRecord(job_id, str(status.get("state")), request, status)
        with self._lock:
            self._cache[job_id] = rec
        return rec

    def set_state(self, job_id: str, state: str, *, durable: bool = True, **fields: Any) -> JobRecord:
        """Replace state.json (atomically) with `state` and extra `fields`; returns the new record.

        durable=False skips the fsync, for changes a crash may lose without harm ("running": after a
        crash a job that is still "queued" on disk is marked interrupted just the same)."""
        rec = self.get(job_id)
        if rec is None:
            raise KeyError(job_id)
        status = {**rec.status, **fields, "state": state, "updated": time.time()}
        atomic_write(
            self.job_dir(job_id) / "state.json", json.dumps(status).encode(), fsync=self.fsync and durable
        )
        new = JobRecord(job_id, state, rec.request, status)
        with self._lock:
            self._cache[job_id] = new
        return new

    def write_outputs(self, job_id: str, frames: Sequence[Any], frame_format: str = "png") -> None:
        """Write the output frames (any buffers) as outputs/0000.png ... or 0000.rgb ... (all or nothing).

        One unbuffered write per file straight from the frame's buffer (no copy); with fsync, all files
        are written first and then synced, so the disk can flush them together."""
        d = self.job_dir(job_id)
        tmp = d / "outputs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        fds = []
        try:
            for i, data in enumerate(frames):
                fd = os.open(
                    tmp / output_frame_name(i, frame_format), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
                )
                fds.append(fd)
                view = memoryview(data).cast("B")
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
            if self.fsync:
                for fd in fds:
                    os.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)
        shutil.rmtree(d / "outputs", ignore_errors=True)
        os.replace(tmp, d / "outputs")
        if self.fsync:
            _fsync_dir(d)

    def read_outputs(self, job_id: str, frame_format: str = "png") -> list[bytes]:
        d = self.outputs_dir(job_id)
        ext = "rgb" if frame_format == "rgb8" else "png"
        return [p.read_bytes() for p in sorted(d.glob(f"[0-9]*.{ext}"))]

    def read_inputs(self, job_id: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        """(reference PNG bytes, [(pose name, pose bytes), ...]) in frame order."""
        rec = self.get(job_id)
        if rec is None:
            raise KeyError(job_id)
        names = [check_name(n) for n in rec.request.get("pose_names", [])]
        with zipfile.ZipFile(self.job_dir(job_id) / JOB_ARCHIVE) as archive:
            return archive.read("reference.png"), [(n, archive.read(f"pose/{n}")) for n in names]

    def job_ids(self) -> list[str]:
        out = []
        for p in self.root.iterdir():
            if p.is_dir() and not p.name.startswith("."):
                with contextlib.suppress(Exception):
                    out.append(check_job_id(p.name))
        return out

    # -- restart
    def recover(self, keep_days: float | None = None) -> list[str]:
        """After a (re)start: drop half-written folders, mark queued/running jobs 'interrupted', prune old
        finished jobs. Returns the ids of the jobs it marked interrupted."""
        interrupted = []
        now = time.time()
        for p in list(self.root.iterdir()):
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
        for job_id in self.job_ids():
            rec = self.get(job_id)
            d = self.job_dir(job_id)
            if rec is None:
                log.warning("job %s has no readable job.zip; removing it", job_id)
                shutil.rmtree(d, ignore_errors=True)
                continue
            shutil.rmtree(d / "outputs.tmp", ignore_errors=True)
            if not rec.terminal:
                self.set_state(
                    job_id,
                    "interrupted",
                    error={"code": "interrupted", "message": "the server stopped before this job finished"},
                )
                interrupted.append(job_id)
            elif keep_days is not None and now - float(rec.status.get("updated", now)) > keep_days * 86400:
                shutil.rmtree(d, ignore_errors=True)
                with self._lock:
                    self._cache.pop(job_id, None)
        return interrupted

    def forget(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            for j in job_ids:
                self._cache.pop(j, None)
