"""The FramePrompt wire protocol: message types, validation, limits, encode/decode.

Pure Python (json, re, struct, zlib): no bpy, no torch, no zmq. It ships inside the Blender extension and
the backend imports this same module, so both sides agree by construction. `docs/protocol.md` is the
prose version of this file.

A message is a list of byte frames (a ZeroMQ multipart message): frame 0 is a UTF-8 JSON object, the
header; frames 1.. are binary parts (PNG images, OpenPose JSON), described in order by `header["parts"]`.

    header = {"v": 1, "type": "submit", "req": "c1-7", "parts": [{"name": "reference.png", "role":
              "reference", "kind": "png"}, ...], ...type-specific fields}

Revisions: the wire version `v` is still 1; revision 2 adds raw RGB result frames (`result_format:
"rgb8"` in a submit, parts of kind "rgb8" in a result). It is additive: a revision-1 server ignores the
unknown `result_format` key and answers with PNG frames (clients read each part's `kind`), and a
revision-1 client never asks for rgb8, so it only ever sees PNG frames. Servers advertise `revision` and
`frame_formats` in hello. Revision 3 adds `model_size` to hello (the model's native size, largest size,
size multiple and window; `ModelSize`), and a server of revision 3 refuses at submit a size its model
cannot take (`check_model_size`); `fit_model_size` is the client's choice of a size for a camera aspect.
Revision 4 adds live previews (a submit's `preview` field, `preview` messages with small PNG frames of
the current estimate; `check_preview`, `build_preview`) and `release` (the server frees its model, which
it loads again for the next job; hello `model_loaded`).

The ROUTER on the server side prepends the client's routing id; it is not part of this module's frames.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from ..core.errors import FramePromptError
from ..core.frame_names import frame_name

PROTOCOL_VERSION = 1
# Additive revisions of version 1 (see the module docstring and docs/protocol.md): 2 = rgb8 result frames,
# 3 = hello `model_size`, sizes checked against the model at submit, 4 = previews and `release`.
PROTOCOL_REVISION = 4
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"

# Messages a client sends, and messages a server sends.
CLIENT_TYPES = frozenset({"hello", "submit", "cancel", "status", "fetch", "heartbeat", "release"})
SERVER_TYPES = frozenset(
    {"hello", "accepted", "progress", "result", "error", "status", "heartbeat", "preview", "released"}
)

# Job states. Terminal states never change again.
JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
TERMINAL_STATES = frozenset({"done", "failed", "cancelled", "interrupted"})

# Progress phases, in the order a job goes through them.
PHASES = ("queued", "preparing", "loading", "denoising", "decoding", "saving")

POSE_FORMATS = ("png", "openpose_json")
# Result frame formats: "png" (default) or "rgb8" (raw 8-bit RGB, row-major, width*height*3 bytes; rev 2).
FRAME_FORMATS = ("png", "rgb8")
# Live previews (rev 4): "fast" projects the latents to RGB with a linear map, "vae" decodes the current
# estimate of the clean latents with the VAE. Small images only: the longest side is at most this.
PREVIEW_MODES = ("off", "fast", "vae")
PREVIEW_MAX_SIDE = 256

# Stable error codes -> the hint sent when the sender has nothing more specific to say.
ERROR_HINTS: dict[str, str] = {
    "bad_message": "send a multipart message whose first frame is a JSON object (see docs/protocol.md)",
    "unsupported_version": "update the FramePrompt add-on and the backend to the same release",
    "unknown_type": "use one of: hello, submit, cancel, status, fetch, heartbeat, release",
    "bad_request": "check the message fields against docs/protocol.md",
    "message_too_large": "send fewer or smaller images, or raise the server's --max-message-mb",
    "too_many_frames": "animate fewer frames per job (split the animation) or raise the server's --max-frames",
    "resolution_too_large": "render the reference and skeletons at a lower resolution",
    "bad_image": "send PNG files (8 or 16 bit, any colour type) that open in an image viewer",
    "image_too_large": "the PNG decodes to more pixels than the server allows; use a smaller image",
    "bad_name": "use names of letters, digits, '.', '_' and '-' only, without folders",
    "bad_pose": "send OpenPose JSON ({'people': [{'pose_keypoints_2d': [...]}]}) or skeleton PNGs",
    "unknown_lora": "ask the server for its LoRAs (hello) and pick one of them, or none",
    "unknown_job": "the server does not know this job id; submit the job again",
    "not_finished": "wait for the job's result event, or ask its status",
    "queue_full": "wait for running jobs to finish, or start the server with a larger --queue-size",
    "cancelled": "the job was cancelled; submit it again to re-run it",
    "interrupted": "the server stopped while this job was queued or running; submit it again",
    "out_of_memory": "the GPU ran out of memory: animate fewer frames, lower the resolution, or enable tiling",
    "model_error": "check the server log; the model could not run this job",
    "internal_error": "this is a bug in the FramePrompt server; check its log and report it",
    "shutting_down": "the server is stopping; start it again and re-submit",
    # Raised on the client side only (never sent by a server):
    "server_unavailable": "start it with `frameprompt serve` (or check the address, firewall and keys)",
    "auth_failed": "the server rejected this client's CurveZMQ key: add its public key to the server's "
    "authorized_clients folder (see `frameprompt keys`)",
    "timeout": "the server did not answer in time; check that it is running and not overloaded",
    "closed": "the client was closed",
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REQ_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Allowed bit depths per PNG colour type (PNG spec, table 11.1).
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class ProtocolError(FramePromptError):
    """A message broke the protocol, or the server answered with an error. `code` is stable (see
    ERROR_HINTS); without a hint of its own the code's standard hint is used."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, ERROR_HINTS.get(code, "") if hint is None else hint, code=code)

    def describe(self) -> str:
        return f"{self.message} ({self.code})" + (f"\n  fix: {self.hint}" if self.hint else "")

    def fields(self) -> dict[str, str]:
        """The error's fields for an `error` message header."""
        return {"code": self.code, "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class Limits:
    """Caps a server enforces on what it receives (it advertises them in its hello reply)."""

    max_message_bytes: int = 512 * 1024 * 1024
    max_header_bytes: int = 1024 * 1024
    max_frames: int = 257
    max_width: int = 2048
    max_height: int = 2048
    max_pixels: int = 2048 * 2048
    max_pose_json_bytes: int = 1024 * 1024
    max_prompt_chars: int = 4000
    max_steps: int = 1000
    max_options: int = 64

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Limits:
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__ and _is_int(v)})


DEFAULT_LIMITS = Limits()


@dataclass
class Message:
    """A decoded message: its `type`, the whole JSON `header`, and the binary `parts` in order."""

    type: str
    header: dict[str, Any]
    parts: list[bytes] = field(default_factory=list)

    @property
    def req(self) -> str | None:
        return self.header.get("req")

    @property
    def job_id(self) -> str | None:
        return self.header.get("job_id")


# --------------------------------------------------------------------------------------------- encoding


def encode(
    msg_type: str, fields: Mapping[str, Any] | None = None, parts: Sequence[bytes] = ()
) -> list[bytes]:
    """Frames for one message: the JSON header (`v`, `type`, then `fields`) followed by `parts`."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg_type}
    if fields:
        header.update({k: v for k, v in fields.items() if k not in ("v", "type")})
    data = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return [data, *parts]


def error_frames(
    code: str, message: str, hint: str | None = None, *, req: str | None = None, job_id: str | None = None
) -> list[bytes]:
    """Frames for an `error` message."""
    fields: dict[str, Any] = ProtocolError(code, message, hint).fields()
    if req is not None:
        fields["req"] = req
    if job_id is not None:
        fields["job_id"] = job_id
    return encode("error", fields)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_header(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Parse a header frame into a dict, or raise ProtocolError('bad_message')."""
    if len(frame) > limits.max_header_bytes:
        raise ProtocolError(
            "message_too_large", f"header is {len(frame)} bytes, the limit is {limits.max_header_bytes}"
        )
    try:
        header = json.loads(bytes(frame).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("bad_message", f"header is not UTF-8 JSON: {str(exc)[:120]}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_message", "header is not a JSON object")
    return header


def decode(
    frames: Sequence[bytes], *, expect: Iterable[str] = CLIENT_TYPES, limits: Limits = DEFAULT_LIMITS
) -> Message:
    """Check the envelope of a message (size, JSON header, version, type, parts list) and return it.

    Type-specific fields are checked by the parse_* functions. Raises ProtocolError.
    """
    if not frames:
        raise ProtocolError("bad_message", "empty message")
    total = sum(len(f) for f in frames)
    if total > limits.max_message_bytes:
        raise ProtocolError(
            "message_too_large", f"message is {total} bytes, the limit is {limits.max_message_bytes}"
        )
    header = decode_header(frames[0], limits)
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version!r} is not supported; this side speaks version {PROTOCOL_VERSION}",
        )
    msg_type = header.get("type")
    expected = frozenset(expect)
    if not isinstance(msg_type, str) or msg_type not in expected:
        shown = msg_type if isinstance(msg_type, str) else repr(msg_type)
        raise ProtocolError(
            "unknown_type",
            f"unknown message type {shown[:40]!r}",
            "use one of: " + ", ".join(sorted(expected)),
        )
    req = header.get("req")
    if req is not None and (not isinstance(req, str) or not _REQ_RE.match(req)):
        raise ProtocolError("bad_request", "'req' must be a string of 1-64 letters, digits or ._:-")
    # bytes and memoryviews (zero-copy views of received frames) are kept as they are
    parts = [f if isinstance(f, bytes | memoryview) else bytes(f) for f in frames[1:]]
    descriptors = header.get("parts", [])
    if not isinstance(descriptors, list) or len(descriptors) != len(parts):
        raise ProtocolError(
            "bad_request",
            f"header lists {len(descriptors) if isinstance(descriptors, list) else 'no'} parts "
            f"but the message carries {len(parts)}",
        )
    for d in descriptors:
        if not isinstance(d, dict):
            raise ProtocolError("bad_request", "each entry of 'parts' must be an object")
    return Message(msg_type, header, parts)


def request_id(frames: Sequence[bytes]) -> str | None:
    """Best-effort `req` of a (possibly invalid) message, so an error reply can name the request."""
    try:
        header = json.loads(bytes(frames[0])[:65536].decode("utf-8"))
    except Exception:
        return None
    req = header.get("req") if isinstance(header, dict) else None
    return req if isinstance(req, str) and _REQ_RE.match(req) else None


# ---------------------------------------------------------------------------------------- validation


def check_name(name: Any, what: str = "name") -> str:
    """A file name that is safe to join to a folder: no separators, no '..', no leading dot."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ProtocolError("bad_name", f"{what} {str(name)[:80]!r} is not a plain file name")
    return name


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
        raise ProtocolError("bad_name", f"job id {str(job_id)[:80]!r} is not valid")
    return job_id


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool

    @property
    def channels(self) -> int:
        return _PNG_CHANNELS[self.color_type]


def png_info(data: bytes | bytearray | memoryview, what: str = "image") -> PngInfo:
    """Read a PNG's size from its IHDR chunk and walk its chunks (lengths and CRCs) without decoding pixels.

    Raises ProtocolError('bad_image') for anything that is not a well-formed PNG.
    """
    if len(data) < 8 + 25 + 12 or data[:8] != _PNG_SIGNATURE:
        raise ProtocolError("bad_image", f"{what} is not a PNG file")
    length, ctype = struct.unpack(">I4s", data[8:16])
    if ctype != b"IHDR" or length != 13:
        raise ProtocolError("bad_image", f"{what}: PNG does not start with an IHDR chunk")
    width, height, depth, color, compression, filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise ProtocolError("bad_image", f"{what}: PNG size {width}x{height} is invalid")
    if color not in _PNG_DEPTHS or depth not in _PNG_DEPTHS[color] or compression or filt or interlace > 1:
        raise ProtocolError(
            "bad_image", f"{what}: PNG header is invalid (depth {depth}, colour type {color})"
        )
    pos, seen_idat, n = 8, False, 0
    end = len(data)
    while True:
        if pos + 12 > end or n > 1_000_000:
            raise ProtocolError("bad_image", f"{what}: PNG is truncated (no IEND chunk)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if length > end - pos - 12:
            raise ProtocolError("bad_image", f"{what}: PNG chunk {ctype!r} runs past the end of the file")
        body_end = pos + 8 + length
        (crc,) = struct.unpack(">I", data[body_end : body_end + 4])
        if zlib.crc32(data[pos + 4 : body_end]) != crc:
            raise ProtocolError("bad_image", f"{what}: PNG chunk {ctype!r} is corrupt (CRC mismatch)")
        seen_idat = seen_idat or ctype == b"IDAT"
        pos, n = body_end + 4, n + 1
        if ctype == b"IEND":
            break
    if not seen_idat:
        raise ProtocolError("bad_image", f"{what}: PNG has no image data")
    return PngInfo(width, height, depth, color, bool(interlace))


def check_png(
    data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS, what: str = "image"
) -> PngInfo:
    """png_info() plus the resolution caps. This is the first half of the decompression-bomb guard: a PNG
    never reaches a decoder when its header promises more pixels than the limits (the server decodes with
    Pillow's MAX_IMAGE_PIXELS set as the second half)."""
    info = png_info(data, what)
    if info.width > limits.max_width or info.height > limits.max_height:
        raise ProtocolError(
            "resolution_too_large",
            f"{what} is {info.width}x{info.height}; the limit is {limits.max_width}x{limits.max_height}",
        )
    if info.width * info.height > limits.max_pixels:
        raise ProtocolError(
            "image_too_large",
            f"{what} has {info.width * info.height} pixels; the limit is {limits.max_pixels}",
        )
    return info


def check_pose_json(data: bytes, limits: Limits = DEFAULT_LIMITS, what: str = "pose") -> dict[str, Any]:
    """Parse one OpenPose JSON part: a JSON object with a 'people' list (drawing happens on the server)."""
    if len(data) > limits.max_pose_json_bytes:
        raise ProtocolError(
            "message_too_large", f"{what} is {len(data)} bytes; the limit is {limits.max_pose_json_bytes}"
        )
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("bad_pose", f"{what} is not UTF-8 JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("people", []), list):
        raise ProtocolError("bad_pose", f"{what} is not an OpenPose JSON object with a 'people' list")
    return doc


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


# ------------------------------------------------------------------------------------------- hello


def build_hello(req: str | None = None, client: str = "") -> list[bytes]:
    fields: dict[str, Any] = {"client": client}
    if req:
        fields["req"] = req
    return encode("hello", fields)


# -------------------------------------------------------------------------------- the model's sizes


@dataclass(frozen=True)
class ModelSize:
    """What a server's model takes (hello `model_size`, revision 3): `native_width` x `native_height` is
    the size it was made for (its pixel count is what a client aims at), `max_width` x `max_height` the
    largest it takes (its rotary position table, and the server's limits), and both sides must be
    multiples of `size_multiple` (the VAE's spatial factor times the transformer's patch).
    `window_frames`: frames per generation window (None = unknown)."""

    native_width: int
    native_height: int
    max_width: int
    max_height: int
    size_multiple: int = 16
    window_frames: int | None = None

    def __post_init__(self) -> None:
        for key in ("native_width", "native_height", "max_width", "max_height", "size_multiple"):
            v = getattr(self, key)
            if not _is_int(v) or v < 1:
                raise ValueError(f"ModelSize.{key} must be a positive int, not {v!r}")
        if self.window_frames is not None and (not _is_int(self.window_frames) or self.window_frames < 1):
            raise ValueError(
                f"ModelSize.window_frames must be a positive int or None, not {self.window_frames!r}"
            )

    def to_dict(self) -> dict[str, int | None]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Any) -> ModelSize | None:
        """A hello's `model_size` object, or None when absent or malformed (an older or model-less server)."""
        if not isinstance(d, Mapping):
            return None
        keys = ("native_width", "native_height", "max_width", "max_height", "size_multiple")
        if not all(_is_int(d.get(k)) and d[k] > 0 for k in keys):
            return None
        window = d.get("window_frames")
        window = window if _is_int(window) and window > 0 else None
        nw, nh, mw, mh, m = (int(d[k]) for k in keys)
        return cls(nw, nh, mw, mh, m, window)

    @classmethod
    def from_hello(cls, hello: Any) -> ModelSize | None:
        return cls.from_dict(hello.get("model_size")) if isinstance(hello, Mapping) else None

    @property
    def native_pixels(self) -> int:
        return self.native_width * self.native_height


def fit_size(
    aspect: float,
    pixels: float,
    multiple: int = 16,
    max_width: int | None = None,
    max_height: int | None = None,
) -> tuple[int, int]:
    """(width, height) with width / height ~ `aspect` and width * height ~ `pixels`, each a multiple of
    `multiple` (at least one multiple), scaled down as a whole (keeping the aspect) to fit within
    `max_width` x `max_height`."""
    if not (_is_number(aspect) and aspect > 0):
        raise ValueError(f"aspect must be a positive number, not {aspect!r}")
    if not (_is_number(pixels) and pixels > 0):
        raise ValueError(f"pixels must be a positive number, not {pixels!r}")
    if not (_is_int(multiple) and multiple > 0):
        raise ValueError(f"multiple must be a positive int, not {multiple!r}")
    w, h = math.sqrt(pixels * aspect), math.sqrt(pixels / aspect)
    # the largest multiples that fit (at least one multiple, even under a smaller cap)
    cap_w = max(multiple, (max_width // multiple) * multiple) if max_width else None
    cap_h = max(multiple, (max_height // multiple) * multiple) if max_height else None
    scale = min(1.0, (cap_w / w) if cap_w else 1.0, (cap_h / h) if cap_h else 1.0)
    w, h = w * scale, h * scale

    def snap(v: float, cap: int | None) -> int:
        out = max(multiple, int(math.floor(v / multiple + 0.5)) * multiple)
        return min(out, cap) if cap else out

    return snap(w, cap_w), snap(h, cap_h)


def fit_model_size(aspect: float, model: ModelSize) -> tuple[int, int]:
    """The size to animate a camera of `aspect` (width / height) with `model`: its native pixel count at
    that aspect, in multiples of its size multiple, within its largest size."""
    return fit_size(aspect, model.native_pixels, model.size_multiple, model.max_width, model.max_height)


def check_model_size(width: int, height: int, model: ModelSize) -> None:
    """Raise ProtocolError when `model` cannot take width x height: above its largest size
    (`resolution_too_large`) or not in multiples of its size multiple (`bad_layout`). The hint names the
    largest and the native size, and a size of the same aspect that works."""
    m = model.size_multiple
    native = f"{model.native_width}x{model.native_height}"
    largest = f"{model.max_width}x{model.max_height}"
    fw, fh = fit_model_size(width / height, model)
    if width > model.max_width or height > model.max_height:
        raise ProtocolError(
            "resolution_too_large",
            f"{width}x{height} is larger than this server's model takes (at most {largest})",
            f"use at most {largest}; the model's native size is {native} (for this aspect: {fw}x{fh})",
        )
    if width % m or height % m:
        sw = min(model.max_width, max(m, round(width / m) * m))
        sh = min(model.max_height, max(m, round(height / m) * m))
        raise ProtocolError(
            "bad_layout",
            f"{width}x{height}: this server's model takes widths and heights in multiples of {m}",
            f"use {sw}x{sh}; the model's native size is {native}, at most {largest}",
        )


# ------------------------------------------------------------------------------------------ submit

# name -> (check, description). None means "absent / server default".
_PARAM_SPECS: dict[str, str] = {
    "num_frames": "int",
    "width": "int",
    "height": "int",
    "steps": "int",
    "guidance_scale": "number",
    "seed": "int",
    "prompt": "str",
    "lora": "name",
    "lora_scale": "number",
    "cache": "str",
    "loras": "list",
    "fps": "number",
    "options": "object",
}
# `cache`: the step cache of a job, "NAME" or "NAME:VALUE" (the backend's `--cache`); "none" turns off
# a server default.
STEP_CACHES = ("first-block", "mag", "taylorseer")
# `loras`: several of the server's LoRAs at once, [{"name": ..., "scale": ...}, ...]
MAX_LORAS = 8


def check_step_cache(value: str) -> str:
    """A job's `cache` value, normalised ("first-block", "mag:0.1", "none"); ProtocolError if malformed."""
    name, sep, raw = value.strip().lower().partition(":")
    hint = "use " + ", ".join(f"'{n}' or '{n}:VALUE'" for n in STEP_CACHES) + ", or 'none'"
    if name == "none" and not sep:
        return name
    if name not in STEP_CACHES:
        raise ProtocolError("bad_request", f"unknown step cache {name[:40]!r}", hint)
    if sep:
        try:
            number = float(raw)
        except ValueError:
            raise ProtocolError(
                "bad_request", f"step cache value {raw[:40]!r} is not a number", hint
            ) from None
        if not (0.0 < number <= 1000.0):
            raise ProtocolError("bad_request", f"step cache value {number} is outside (0, 1000]", hint)
    return f"{name}{sep}{raw.strip()}"


def check_loras(value: list[Any]) -> list[dict[str, Any]]:
    """A job's `loras` list: each {"name": str, "scale": number in [-10, 10] (default 1.0)}, names
    distinct, at most MAX_LORAS."""
    if len(value) > MAX_LORAS:
        raise ProtocolError("bad_request", f"'loras' has more than {MAX_LORAS} entries")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not set(item) <= {"name", "scale"} or "name" not in item:
            raise ProtocolError(
                "bad_request",
                f"loras[{i}] must be an object {{'name': ..., 'scale': ...}}",
                "scale is optional",
            )
        name = check_name(item["name"], "LoRA name")
        scale = item.get("scale", 1.0)
        if not _is_number(scale) or not (-10.0 <= scale <= 10.0):
            raise ProtocolError("bad_request", f"loras[{i}] scale must be a number in [-10, 10]")
        if any(o["name"] == name for o in out):
            raise ProtocolError("bad_request", f"LoRA {name!r} is listed twice in 'loras'")
        out.append({"name": name, "scale": float(scale)})
    return out


@dataclass
class JobParams:
    """Generation parameters of a submit. None = the server's default.

    `num_frames` is the number of output frames and must equal the number of pose parts; it may exceed the
    model's window (`window_frames` in hello) only on servers whose hello says `long_animation: true`.
    `options` is an open JSON object for extensions (e.g. long-animation windowing); servers ignore keys
    they do not know there. `cache` chooses the step cache (`check_step_cache`); `loras` combines several
    of the server's LoRAs, each with its strength (`check_loras`), and takes the place of `lora`.
    """

    num_frames: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    prompt: str | None = None
    lora: str | None = None
    lora_scale: float | None = None
    cache: str | None = None
    loras: list[dict[str, Any]] | None = None
    fps: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in _PARAM_SPECS if getattr(self, k) is not None}
        if not self.options:
            d.pop("options", None)
        return d


def parse_params(raw: Any, limits: Limits = DEFAULT_LIMITS) -> JobParams:
    """Validate a submit's `params` object (strict: unknown keys are errors, except inside `options`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProtocolError("bad_request", "'params' must be a JSON object")
    unknown = sorted(set(raw) - set(_PARAM_SPECS))
    if unknown:
        raise ProtocolError(
            "bad_request",
            f"unknown parameter {unknown[0][:40]!r}",
            "known parameters: " + ", ".join(_PARAM_SPECS) + "; put extensions in 'options'",
        )
    out = JobParams()
    for key, kind in _PARAM_SPECS.items():
        v = raw.get(key)
        if v is None:
            continue
        ok = {
            "int": _is_int,
            "number": _is_number,
            "str": lambda x: isinstance(x, str),
            "name": lambda x: isinstance(x, str),
            "object": lambda x: isinstance(x, dict),
            "list": lambda x: isinstance(x, list),
        }[kind](v)
        if not ok:
            raise ProtocolError(
                "bad_request", f"parameter {key!r} must be {'an' if kind[0] in 'io' else 'a'} {kind}"
            )
        setattr(out, key, v)

    def in_range(key: str, lo: float, hi: float) -> None:
        v = getattr(out, key)
        if v is not None and not (lo <= v <= hi):
            raise ProtocolError("bad_request", f"parameter {key!r} = {v} is outside [{lo}, {hi}]")

    if out.num_frames is not None and out.num_frames > limits.max_frames:
        raise ProtocolError(
            "too_many_frames", f"{out.num_frames} frames requested; the limit is {limits.max_frames}"
        )
    in_range("num_frames", 1, limits.max_frames)
    for key, cap in (("width", limits.max_width), ("height", limits.max_height)):
        v = getattr(out, key)
        if v is not None and v > cap:
            raise ProtocolError("resolution_too_large", f"{key} {v} is above the limit {cap}")
        in_range(key, 16, cap)
    in_range("steps", 1, limits.max_steps)
    in_range("guidance_scale", 0.0, 100.0)
    in_range("seed", 0, 2**63 - 1)
    in_range("lora_scale", -10.0, 10.0)
    in_range("fps", 0.1, 1000.0)
    if out.prompt is not None and len(out.prompt) > limits.max_prompt_chars:
        raise ProtocolError("bad_request", f"prompt is longer than {limits.max_prompt_chars} characters")
    if out.lora is not None:
        check_name(out.lora, "LoRA name")
    if out.cache is not None:
        out.cache = check_step_cache(out.cache)
    if out.loras is not None:
        out.loras = check_loras(out.loras)
        if out.lora is not None:
            raise ProtocolError("bad_request", "give either 'lora' or 'loras', not both", "put it in 'loras'")
    if len(out.options) > limits.max_options:
        raise ProtocolError("bad_request", f"'options' has more than {limits.max_options} keys")
    return out


@dataclass
class SubmitRequest:
    """A validated submit: the reference PNG, one pose part per frame (PNG or OpenPose JSON), parameters."""

    reference: bytes
    poses: list[bytes]
    pose_format: str
    pose_names: list[str]
    params: JobParams
    reference_info: PngInfo | None = None
    req: str | None = None
    result_format: str = "png"
    preview: dict[str, Any] | None = None

    @property
    def num_frames(self) -> int:
        return len(self.poses)


def build_submit(
    reference_png: bytes,
    poses: Sequence[bytes],
    *,
    pose_format: str = "png",
    params: JobParams | Mapping[str, Any] | None = None,
    pose_names: Sequence[str] | None = None,
    req: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    result_format: str | None = None,
    preview: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """Frames for a submit. Validates everything a server would (raises ProtocolError), so a client fails
    fast with the same code the server would send. `result_format`: None/"png" (default) or "rgb8"
    (revision 2; a revision-1 server ignores it and sends PNG). `preview`: None or {"mode": "fast" |
    "vae", "every": steps, "max_side": pixels} (revision 4; an older server ignores it)."""
    if isinstance(params, JobParams):
        params = params.to_dict()
    params = dict(params or {})
    if poses:
        params.setdefault("num_frames", len(poses))
    ext = "png" if pose_format == "png" else "json"
    names = (
        list(pose_names) if pose_names is not None else [frame_name(i, f".{ext}") for i in range(len(poses))]
    )
    parts_desc = [{"name": "reference.png", "role": "reference", "kind": "png"}]
    parts_desc += [{"name": n, "role": "pose", "kind": "png" if ext == "png" else "json"} for n in names]
    fields: dict[str, Any] = {"pose_format": pose_format, "params": params, "parts": parts_desc}
    if result_format is not None and result_format != "png":
        fields["result_format"] = result_format
    if preview is not None and preview.get("mode", "off") != "off":
        fields["preview"] = dict(preview)
    if req:
        fields["req"] = req
    frames = encode("submit", fields, [bytes(reference_png), *(bytes(p) for p in poses)])
    parse_submit(decode(frames, limits=limits), limits)  # same checks as the server
    return frames


def parse_submit(msg: Message, limits: Limits = DEFAULT_LIMITS) -> SubmitRequest:
    """Validate a decoded submit message (schema, names, PNG headers, sizes). Raises ProtocolError."""
    h = msg.header
    pose_format = h.get("pose_format", "png")
    if pose_format not in POSE_FORMATS:
        raise ProtocolError("bad_request", f"pose_format must be one of {', '.join(POSE_FORMATS)}")
    params = parse_params(h.get("params"), limits)
    result_format = h.get("result_format", "png")
    if result_format not in FRAME_FORMATS:
        raise ProtocolError("bad_request", f"result_format must be one of {', '.join(FRAME_FORMATS)}")
    descriptors = h.get("parts", [])
    reference: bytes | None = None
    poses: list[bytes] = []
    names: list[str] = []
    seen: set[str] = set()
    for d, data in zip(descriptors, msg.parts, strict=True):
        name = check_name(d.get("name"), "part name")
        if name in seen:
            raise ProtocolError("bad_name", f"part name {name!r} appears twice")
        seen.add(name)
        role = d.get("role")
        if role == "reference":
            if reference is not None:
                raise ProtocolError("bad_request", "more than one reference image")
            reference = data
        elif role == "pose":
            poses.append(data)
            names.append(name)
        else:
            raise ProtocolError("bad_request", f"part {name!r} has unknown role {str(role)[:40]!r}")
    if reference is None:
        raise ProtocolError("bad_request", "the submit carries no reference image (role 'reference')")
    if not poses:
        raise ProtocolError("bad_request", "the submit carries no pose frames (role 'pose')")
    if len(poses) > limits.max_frames:
        raise ProtocolError("too_many_frames", f"{len(poses)} pose frames; the limit is {limits.max_frames}")
    if params.num_frames is not None and params.num_frames != len(poses):
        raise ProtocolError(
            "bad_request",
            f"num_frames is {params.num_frames} but the submit carries {len(poses)} pose frames",
        )
    params.num_frames = len(poses)
    ref_info = check_png(reference, limits, "reference image")
    for name, data in zip(names, poses, strict=True):
        if pose_format == "png":
            check_png(data, limits, f"pose {name}")
        else:
            check_pose_json(data, limits, f"pose {name}")
    return SubmitRequest(
        reference,
        poses,
        pose_format,
        names,
        params,
        ref_info,
        h.get("req"),
        result_format,
        check_preview(h.get("preview")),
    )


def check_preview(raw: Any) -> dict[str, Any] | None:
    """A submit's `preview` field (revision 4) as {"mode", "every", "max_side"}, or None for no previews.
    Raises ProtocolError('bad_request') naming the bad key."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_request", '\'preview\' must be an object like {"mode": "fast"}')
    unknown = sorted(set(raw) - {"mode", "every", "max_side"})
    if unknown:
        raise ProtocolError(
            "bad_request", f"unknown preview key {unknown[0][:40]!r}", "use mode, every and max_side"
        )
    mode = raw.get("mode", "fast")
    if mode not in PREVIEW_MODES:
        raise ProtocolError("bad_request", f"preview mode must be one of {', '.join(PREVIEW_MODES)}")
    every, max_side = raw.get("every", 1), raw.get("max_side", 128)
    if not (_is_int(every) and 1 <= every <= 1000):
        raise ProtocolError("bad_request", "preview 'every' must be a number of steps, 1 ... 1000")
    if not (_is_int(max_side) and 16 <= max_side <= PREVIEW_MAX_SIDE):
        raise ProtocolError("bad_request", f"preview 'max_side' must be 16 ... {PREVIEW_MAX_SIDE} pixels")
    return None if mode == "off" else {"mode": mode, "every": every, "max_side": max_side}


def build_preview(job_id: str, step: int, total: int, mode: str, frames: Sequence[bytes]) -> list[bytes]:
    """A `preview` message (revision 4): small PNG frames of the job's current estimate after `step` of
    `total` steps, in frame order."""
    fields: dict[str, Any] = {
        "job_id": job_id,
        "step": int(step),
        "total": int(total),
        "mode": mode,
        "parts": [{"name": frame_name(i), "role": "preview", "kind": "png"} for i in range(len(frames))],
    }
    return encode("preview", fields, list(frames))


# ----------------------------------------------------------------------------- cancel / status / fetch


def build_job_request(msg_type: str, job_id: str, req: str | None = None) -> list[bytes]:
    """Frames for cancel, status or fetch of `job_id`."""
    if msg_type not in ("cancel", "status", "fetch"):
        raise ValueError(f"not a job request: {msg_type}")
    fields: dict[str, Any] = {"job_id": check_job_id(job_id)}
    if req:
        fields["req"] = req
    return encode(msg_type, fields)


def parse_job_request(msg: Message) -> str:
    """The job id of a cancel/status/fetch message (validated). Raises ProtocolError."""
    if msg.parts:
        raise ProtocolError("bad_request", f"{msg.type} takes no binary parts")
    return check_job_id(msg.header.get("job_id"))


def build_heartbeat(job_ids: Iterable[str] = (), req: str | None = None) -> list[bytes]:
    """A client heartbeat; the server answers with the state of each listed job it knows."""
    fields: dict[str, Any] = {"jobs": list(job_ids)}
    if req:
        fields["req"] = req
    return encode("heartbeat", fields)


def build_release(req: str | None = None) -> list[bytes]:
    """Ask the server to free its model's memory (revision 4); it loads the model again for the next job
    and answers `released`."""
    return encode("release", {"req": req} if req else None)


def parse_heartbeat(msg: Message) -> list[str]:
    jobs = msg.header.get("jobs", [])
    if not isinstance(jobs, list) or len(jobs) > 10_000:
        raise ProtocolError("bad_request", "'jobs' must be a list of job ids")
    return [check_job_id(j) for j in jobs]


# -------------------------------------------------------------------------------- server-side messages


def build_progress(
    job_id: str,
    phase: str,
    step: int = 0,
    total: int = 0,
    *,
    eta_s: float | None = None,
    queue_position: int | None = None,
    message: str = "",
) -> list[bytes]:
    fields: dict[str, Any] = {"job_id": job_id, "phase": phase, "step": step, "total": total}
    if eta_s is not None:
        fields["eta_s"] = round(float(eta_s), 3)
    if queue_position is not None:
        fields["queue_position"] = queue_position
    if message:
        fields["message"] = message
    return encode("progress", fields)


def output_frame_name(index: int, frame_format: str = "png") -> str:
    """File name of output frame `index`: 0000.png, or 0000.rgb for rgb8."""
    return frame_name(index, ".rgb" if frame_format == "rgb8" else ".png")


def build_result(
    job_id: str,
    frames: Sequence[Any],
    meta: Mapping[str, Any] | None = None,
    req: str | None = None,
    *,
    frame_format: str = "png",
    width: int | None = None,
    height: int | None = None,
) -> list[Any]:
    """A result: one part per output frame, named 0000.png, ... (or 0000.rgb ... for rgb8, whose
    descriptors carry `width` and `height`). Frames may be any buffer (bytes, memoryview, numpy array):
    they are sent as they are, without a copy."""
    if frame_format not in FRAME_FORMATS:
        raise ValueError(f"unknown frame format {frame_format!r}")
    desc: dict[str, Any] = {"role": "frame", "kind": frame_format}
    if frame_format == "rgb8":
        if not (width and height):
            raise ValueError("rgb8 frames need width and height")
        desc.update(width=int(width), height=int(height))
    fields: dict[str, Any] = {
        "job_id": job_id,
        "meta": dict(meta or {}),
        "parts": [{"name": output_frame_name(i, frame_format), **desc} for i in range(len(frames))],
    }
    if req:
        fields["req"] = req
    return encode("result", fields, frames)


@dataclass
class Result:
    """A finished job: its frames in order, and server metadata (seed, timings, ...).

    `frame_format` "png": each frame is a PNG file's bytes. "rgb8": each frame is width*height*3 bytes of
    raw RGB (rows top to bottom), as a bytes-like object (the client hands out zero-copy memoryviews of
    the received message); `png_frames()` turns them into PNG files without Pillow."""

    job_id: str
    frames: list[bytes]
    meta: dict[str, Any]
    names: list[str] = field(default_factory=list)
    frame_format: str = "png"
    width: int | None = None
    height: int | None = None

    def png_frames(self, compress_level: int = 6) -> list[bytes]:
        """The frames as PNG bytes, whatever format they arrived in."""
        if self.frame_format == "png":
            return list(self.frames)
        assert self.width and self.height
        return [encode_png_rgb8(f, self.width, self.height, compress_level) for f in self.frames]


def result_from_parts(header: Mapping[str, Any], parts: Sequence[bytes]) -> Result:
    """Validate a result's part descriptors (names, one kind for all, rgb8 sizes) and build the Result."""
    descriptors = header.get("parts", [])
    if not isinstance(descriptors, list) or len(descriptors) != len(parts):
        raise ProtocolError("bad_message", "the result's parts list does not match its frames")
    names, kinds, sizes = [], set(), set()
    for i, (d, data) in enumerate(zip(descriptors, parts, strict=True)):
        if not isinstance(d, dict):
            raise ProtocolError("bad_message", "each entry of 'parts' must be an object")
        names.append(check_name(d.get("name", frame_name(i)), "frame name"))
        kind = d.get("kind", "png")
        if kind not in FRAME_FORMATS:
            raise ProtocolError(
                "bad_message", f"result frame {names[-1]!r} has unknown kind {str(kind)[:20]!r}"
            )
        kinds.add(kind)
        if kind == "rgb8":
            w, h = d.get("width"), d.get("height")
            if not (_is_int(w) and _is_int(h) and w > 0 and h > 0) or len(data) != w * h * 3:
                raise ProtocolError(
                    "bad_message", f"rgb8 frame {names[-1]!r} is {len(data)} bytes, not width*height*3"
                )
            sizes.add((w, h))
    if len(kinds) > 1 or len(sizes) > 1:
        raise ProtocolError("bad_message", "result frames must share one kind and one size")
    frame_format = kinds.pop() if kinds else "png"
    width, height = sizes.pop() if sizes else (None, None)
    meta = header.get("meta") or {}
    return Result(
        check_job_id(header.get("job_id")),
        list(parts),
        dict(meta) if isinstance(meta, dict) else {},
        names,
        frame_format,
        width,
        height,
    )


def parse_result(msg: Message) -> Result:
    return result_from_parts(msg.header, msg.parts)


def encode_png_rgb8(data: bytes, width: int, height: int, compress_level: int = 6) -> bytes:
    """A PNG file (8-bit RGB, filter 0) of raw RGB bytes, with zlib only (no Pillow: Blender lacks it)."""
    stride = width * 3
    if len(data) != stride * height:
        raise ValueError(f"{len(data)} bytes is not {width}x{height} RGB")
    view = memoryview(data).cast("B")
    raw = bytearray((stride + 1) * height)  # each row: filter byte 0, then the row
    for y in range(height):
        raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)] = view[y * stride : (y + 1) * stride]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(raw), compress_level)
    return _PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------ addresses


def address_host(address: str) -> str | None:
    """The host of a tcp:// address ('*' for a wildcard), or None for ipc:// / inproc:// (machine-local)."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ValueError(f"not a ZeroMQ address: {address!r} (expected tcp://HOST:PORT)")
    if scheme in ("ipc", "inproc"):
        return None
    if scheme != "tcp":
        raise ValueError(f"unsupported transport {scheme!r} in {address!r}; use tcp://HOST:PORT")
    if ";" in rest:  # tcp://source;dest: the destination is what matters
        rest = rest.split(";", 1)[1]
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise ValueError(f"no port in {address!r} (expected tcp://HOST:PORT)")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback_address(address: str) -> bool:
    """True when `address` only reaches this machine (127.0.0.0/8, ::1, localhost, ipc://, inproc://)."""
    host = address_host(address)
    if host is None:
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a DNS name: may be reachable from elsewhere
