"""The FramePrompt backend server: ZeroMQ ROUTER I/O loop, on-disk job store, bounded queue, GPU workers.

The wire protocol lives in `frameprompt_blender.wire.protocol` (shared with the Blender add-on).
"""

from __future__ import annotations

from frameprompt.server.app import Server, ServerConfig, ServerError
from frameprompt.server.runners import EchoRunner, PipelineRunner, resolve_runner_factory
from frameprompt.server.security import InsecureBindError, KeysError, check_bind, create_keys
from frameprompt.server.store import JobStore, atomic_write
from frameprompt.server.worker import JobCancelled, JobSpec, RunContext, Runner, RunnerFactory

__all__ = [
    "EchoRunner",
    "InsecureBindError",
    "JobCancelled",
    "JobSpec",
    "JobStore",
    "KeysError",
    "PipelineRunner",
    "RunContext",
    "Runner",
    "RunnerFactory",
    "Server",
    "ServerConfig",
    "ServerError",
    "atomic_write",
    "check_bind",
    "create_keys",
    "resolve_runner_factory",
]
