"""Add-on preferences, keyed by the add-on's package name (``frameprompt_blender`` as a legacy add-on,
``bl_ext.<repo>.frameprompt_blender`` as an extension)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

from .export import FramePromptUserError

# The add-on's root package: preferences, extension_path_user and addon_utils all key on it.
ADDON_PACKAGE: str = __package__.rpartition(".")[0]

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_OUTPUT_DIR = "//frameprompt/"


PREVIEW_ITEMS = [
    ("OFF", "Off", "No previews during a job"),
    ("FAST", "Fast", "Project the current estimate's latents to colours (almost free)"),
    ("VAE", "Accurate", "Decode the current estimate with the VAE (costs more; still capped at a few % "
     "of the job's time)"),
]  # fmt: skip


@dataclass
class Settings:
    """Plain snapshot of the preferences (also the defaults when the add-on is not enabled). A Settings
    built in code talks to `server_address` unless `backend_mode` is "LOCAL"; the preferences start in
    local mode."""

    backend_mode: str = "REMOTE"
    python_env: str = ""
    local_model: str = ""
    local_args: str = ""
    idle_timeout: float = 600.0
    preview_mode: str = "FAST"
    server_address: str = DEFAULT_ADDRESS
    curve_keys_dir: str = ""
    connect_timeout: float = 5.0
    job_timeout: float = 1800.0
    output_dir: str = DEFAULT_OUTPUT_DIR
    keep_inputs: bool = True


class FRAMEPROMPT_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    backend_mode: EnumProperty(  # type: ignore[valid-type]
        name="Backend",
        items=[
            (
                "LOCAL",
                "Local backend (started for you)",
                "The add-on starts `frameprompt serve` on this "
                "machine when a job needs it and stops it when Blender quits",
            ),
            ("REMOTE", "Remote address", "A `frameprompt serve` you run yourself, here or on a GPU box"),
        ],  # fmt: skip
        default="LOCAL",
    )
    python_env: StringProperty(  # type: ignore[valid-type]
        name="Python environment",
        description="The environment where `pip install frameprompt` ran: its folder, its python or its "
        "`frameprompt` command. Empty = the project's .venv next to the add-on, else `frameprompt` on PATH",
        subtype="FILE_PATH",
        default="",
    )
    local_model: StringProperty(  # type: ignore[valid-type]
        name="Model",
        description="Model folder for the local backend (empty = the embedded default model)",
        subtype="DIR_PATH",
        default="",
    )
    local_args: StringProperty(  # type: ignore[valid-type]
        name="Extra serve arguments",
        description="More `frameprompt serve` options for the local backend, e.g. --devices cuda:1",
        default="",
    )
    idle_timeout: FloatProperty(  # type: ignore[valid-type]
        name="Free model after idle (s)",
        description="The backend releases the model's memory after this long without a job (0 = never); "
        "the next job loads it again",
        default=600.0,
        min=0.0,
        max=86400.0,
    )
    preview_mode: EnumProperty(  # type: ignore[valid-type]
        name="Live previews", items=PREVIEW_ITEMS, default="FAST"
    )

    server_address: StringProperty(  # type: ignore[valid-type]
        name="Backend address",
        description="ZeroMQ address of the FramePrompt backend (`frameprompt serve --bind ...`). "
        "A non-loopback host needs Preferences > System > Network > Allow Online Access",
        default=DEFAULT_ADDRESS,
    )
    curve_keys_dir: StringProperty(  # type: ignore[valid-type]
        name="CurveZMQ keys",
        description="Folder written by `frameprompt keys --client NAME` (client.key_secret + server.key); "
        "empty = no encryption (fine on this machine)",
        subtype="DIR_PATH",
        default="",
    )
    connect_timeout: FloatProperty(  # type: ignore[valid-type]
        name="Connect timeout (s)",
        description="How long to wait for the backend to answer before reporting it absent",
        default=5.0,
        min=0.5,
        max=600.0,
    )
    job_timeout: FloatProperty(  # type: ignore[valid-type]
        name="Job timeout (s)",
        description="Give up on a job with no progress message for this long",
        default=1800.0,
        min=10.0,
        max=86400.0,
    )
    output_dir: StringProperty(  # type: ignore[valid-type]
        name="Output folder",
        description="Job folders (inputs and result frames) go here; `//` = next to the .blend file",
        subtype="DIR_PATH",
        default=DEFAULT_OUTPUT_DIR,
    )
    keep_inputs: BoolProperty(  # type: ignore[valid-type]
        name="Keep exported inputs",
        description="Keep reference.png, pose/ and skeleton/ in the job folder after a successful job "
        "(they are always kept after an error)",
        default=True,
    )

    def draw(self, context: Any) -> None:
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_mode", expand=True)
        if self.backend_mode == "LOCAL":
            _draw_local_backend(col, self)
        else:
            col.prop(self, "server_address")
        col.prop(self, "idle_timeout")
        col.prop(self, "preview_mode")
        row = col.row()
        row.operator("frameprompt.test_connection", icon="LINKED")
        row.operator("frameprompt.release_model", icon="TRASH")
        if not bpy.app.online_access:
            col.label(
                text="Online access is off: only loopback addresses (127.0.0.1, localhost) work", icon="INFO"
            )
        box = col.box()
        box.label(text="CurveZMQ encryption (optional)")
        box.prop(self, "curve_keys_dir")
        col.prop(self, "connect_timeout")
        col.prop(self, "job_timeout")
        col.prop(self, "output_dir")
        col.prop(self, "keep_inputs")


def _draw_local_backend(col: Any, prefs: Any) -> None:
    from .local_backend import backend_command, local_backend

    col.prop(prefs, "python_env")
    try:
        col.label(text="Runs: " + " ".join(backend_command(prefs.python_env)) + " serve", icon="CONSOLE")
    except FramePromptUserError as exc:
        col.label(text=exc.message, icon="ERROR")
        col.label(text=exc.hint[:120], icon="INFO")
    col.prop(prefs, "local_model")
    col.prop(prefs, "local_args")
    backend = local_backend()
    col.label(text=backend.status_line(), icon="ERROR" if backend.state == "failed" else "INFO")
    if backend.state == "failed":
        for line in backend.log_tail(6):
            col.label(text=line[:120])


CLASSES = (FRAMEPROMPT_AddonPreferences,)


def get_settings(context: Any = None) -> Settings:
    """The preferences as a :class:`Settings`; defaults when the add-on is registered without
    ``addon_utils`` (e.g. by a batch script calling ``register()`` directly)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    prefs = getattr(addon, "preferences", None) if addon else None
    if prefs is None:
        return Settings()
    return Settings(
        backend_mode=prefs.backend_mode,
        python_env=prefs.python_env,
        local_model=prefs.local_model,
        local_args=prefs.local_args,
        idle_timeout=prefs.idle_timeout,
        preview_mode=prefs.preview_mode,
        server_address=prefs.server_address,
        curve_keys_dir=prefs.curve_keys_dir,
        connect_timeout=prefs.connect_timeout,
        job_timeout=prefs.job_timeout,
        output_dir=prefs.output_dir,
        keep_inputs=prefs.keep_inputs,
    )


def user_data_dir(subdir: str = "") -> Path:
    """Writable folder for the add-on's own data.

    As an extension: ``bpy.utils.extension_path_user(__package__, create=True)`` (the add-on folder
    itself is wiped on upgrade and may be read-only). As a legacy add-on or plain package: a
    ``frameprompt`` folder in the system temp dir.
    """
    try:
        base = Path(bpy.utils.extension_path_user(ADDON_PACKAGE, path=subdir, create=True))
    except (ValueError, AttributeError, RuntimeError):
        base = Path(tempfile.gettempdir()) / "frameprompt" / subdir
        base.mkdir(parents=True, exist_ok=True)
    return base


def resolve_output_dir(output_dir: str) -> Path:
    """Absolute output folder. ``//`` paths are relative to the .blend; with an unsaved .blend they
    fall back to :func:`user_data_dir` (``jobs``)."""
    if output_dir.startswith("//") and not bpy.data.filepath:
        rest = output_dir[2:].strip("/\\")
        base = user_data_dir("jobs")
        return base / rest if rest and rest != "frameprompt" else base
    return Path(bpy.path.abspath(output_dir) if output_dir else os.getcwd()).resolve()
