"""Add-on preferences, keyed by the add-on's package name (``frameprompt_blender`` as a legacy add-on,
``bl_ext.<repo>.frameprompt_blender`` as an extension)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty

# The add-on's root package: preferences, extension_path_user and addon_utils all key on it.
ADDON_PACKAGE: str = __package__.rpartition(".")[0]

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_OUTPUT_DIR = "//frameprompt/"


@dataclass
class Settings:
    """Plain snapshot of the preferences (also the defaults when the add-on is not enabled)."""

    server_address: str = DEFAULT_ADDRESS
    curve_keys_dir: str = ""
    connect_timeout: float = 5.0
    job_timeout: float = 1800.0
    output_dir: str = DEFAULT_OUTPUT_DIR
    keep_inputs: bool = True


class FRAMEPROMPT_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

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
        col.prop(self, "server_address")
        row = col.row()
        row.operator("frameprompt.test_connection", icon="LINKED")
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
