"""The wire protocol (frameprompt_blender.wire.protocol): pure, no sockets."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from frameprompt_blender.wire import protocol as P


def png(size: tuple[int, int] = (16, 16), color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, idat: bytes = b"", color_type: int = 2, depth: int = 8) -> bytes:
    """A PNG whose header says width x height, whatever its data holds (a decompression bomb when large)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    data = idat or zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def submit_frames(n: int = 2, **params: object) -> list[bytes]:
    return P.build_submit(png(), [png() for _ in range(n)], params=params, req="r1")


def test_module_imports_no_bpy_torch_zmq_or_pillow() -> None:
    code = (
        "import sys, frameprompt_blender.wire.protocol\n"
        "bad = [m for m in ('bpy', 'torch', 'zmq', 'PIL', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_encode_decode_round_trip() -> None:
    frames = P.encode("status", {"job_id": "abc", "req": "q-1"})
    msg = P.decode(frames)
    assert msg.type == "status" and msg.job_id == "abc" and msg.req == "q-1" and msg.parts == []
    assert json.loads(frames[0])["v"] == P.PROTOCOL_VERSION


def test_submit_round_trip_png_and_openpose() -> None:
    frames = submit_frames(3, steps=7, seed=5, prompt="a knight", options={"window": 81})
    sub = P.parse_submit(P.decode(frames))
    assert sub.num_frames == 3 and sub.pose_format == "png"
    assert sub.params.steps == 7 and sub.params.seed == 5 and sub.params.options == {"window": 81}
    assert sub.pose_names == ["0000.png", "0001.png", "0002.png"]
    assert sub.reference_info is not None and (sub.reference_info.width, sub.reference_info.height) == (
        16,
        16,
    )

    pose = json.dumps({"people": [{"pose_keypoints_2d": [1.0, 2.0, 0.9] * 18}]}).encode()
    frames = P.build_submit(png(), [pose, pose], pose_format="openpose_json")
    sub = P.parse_submit(P.decode(frames))
    assert sub.pose_format == "openpose_json" and sub.pose_names == ["0000.json", "0001.json"]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([], "bad_message"),
        ([b"not json"], "bad_message"),
        ([b"[1, 2]"], "bad_message"),
        ([b"\xff\xfe"], "bad_message"),
        ([b"[" * 100000], "bad_message"),
        ([b'{"v": 1, "type": "status", "x": NaN}'], "bad_message"),
        ([b'{"type": "hello"}'], "unsupported_version"),
        ([b'{"v": 99, "type": "hello"}'], "unsupported_version"),
        ([b'{"v": 1, "type": "launch_missiles"}'], "unknown_type"),
        ([b'{"v": 1, "type": "result"}'], "unknown_type"),  # a server message sent to the server
        ([b'{"v": 1, "type": 5}'], "unknown_type"),
        ([b'{"v": 1, "type": "hello", "req": "../x"}'], "bad_request"),
        ([b'{"v": 1, "type": "hello"}', b"extra"], "bad_request"),
        ([b'{"v": 1, "type": "hello", "parts": [1]}', b"x"], "bad_request"),
    ],
)
def test_decode_rejects_bad_envelopes(frames: list[bytes], code: str) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.decode(frames)
    assert info.value.code == code
    assert info.value.message and info.value.hint  # every error says what and how to fix


def test_size_caps() -> None:
    limits = P.Limits(max_message_bytes=1000, max_header_bytes=100)
    with pytest.raises(P.ProtocolError, match="message_too_large"):
        P.decode([b'{"v":1,"type":"hello"}', b"x" * 2000], limits=limits)
    with pytest.raises(P.ProtocolError, match="message_too_large"):
        P.decode([b'{"v":1,"type":"hello","pad":"' + b"x" * 200 + b'"}'], limits=limits)


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "a/b.png", "a\\b.png", ".hidden", "..", "", "x" * 200, "C:evil", "a\0b", "é.png", 5],
)
def test_path_traversal_and_odd_names_are_refused(name: object) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.check_name(name)
    assert info.value.code == "bad_name"


def test_part_names_are_checked_in_submit() -> None:
    for bad in ("../../x.png", "sub/x.png"):
        with pytest.raises(P.ProtocolError, match="bad_name"):
            P.build_submit(png(), [png()], pose_names=[bad])
    frames = submit_frames(2)
    header = json.loads(frames[0])
    header["parts"][2]["name"] = header["parts"][1]["name"]
    with pytest.raises(P.ProtocolError, match="appears twice"):
        P.parse_submit(P.decode([json.dumps(header).encode(), *frames[1:]]))
    for bad_id in ("../x", "a/b", "", "x" * 100):
        with pytest.raises(P.ProtocolError, match="bad_name"):
            P.build_job_request("fetch", bad_id)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"steps": 0}, "bad_request"),
        ({"steps": "10"}, "bad_request"),
        ({"steps": True}, "bad_request"),
        ({"seed": -1}, "bad_request"),
        ({"guidance_scale": float("inf")}, "bad_message"),  # Infinity is not JSON
        ({"stepz": 10}, "bad_request"),
        ({"num_frames": 3}, "bad_request"),  # 2 poses sent
        ({"num_frames": 10_000}, "too_many_frames"),
        ({"width": 100_000}, "resolution_too_large"),
        ({"lora": "../../weights"}, "bad_name"),
        ({"prompt": "x" * 5000}, "bad_request"),
        ({"options": [1]}, "bad_request"),
    ],
)
def test_params_validation(params: dict, code: str) -> None:
    header = {
        "v": 1,
        "type": "submit",
        "params": params,
        "parts": [
            {"name": "reference.png", "role": "reference", "kind": "png"},
            {"name": "0000.png", "role": "pose", "kind": "png"},
            {"name": "0001.png", "role": "pose", "kind": "png"},
        ],
    }
    frames = [json.dumps(header).encode(), png(), png(), png()]
    with pytest.raises(P.ProtocolError) as info:
        P.parse_submit(P.decode(frames))
    assert info.value.code == code


def test_submit_structure_errors() -> None:
    with pytest.raises(P.ProtocolError, match="no pose frames"):
        P.build_submit(png(), [])
    with pytest.raises(P.ProtocolError, match="too_many_frames"):
        P.build_submit(png(), [png()] * 5, limits=P.Limits(max_frames=4))
    with pytest.raises(P.ProtocolError, match="pose_format"):
        P.build_submit(png(), [png()], pose_format="bvh")
    with pytest.raises(P.ProtocolError, match="bad_pose"):
        P.build_submit(png(), [b"{not json"], pose_format="openpose_json")
    with pytest.raises(P.ProtocolError, match="bad_image"):
        P.build_submit(b"GIF89a" + b"\0" * 64, [png()])


def test_png_info_reads_the_header_without_decoding() -> None:
    info = P.png_info(png((33, 17)))
    assert (info.width, info.height, info.bit_depth, info.channels) == (33, 17, 8, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        png()[:40],  # truncated
        png()[:-12],  # no IEND
        png()[:8] + b"\0\0\0\x0dIHDX" + png()[16:],  # wrong first chunk
        raw_png(16, 16, color_type=5),  # invalid colour type
        raw_png(0, 16),
    ],
)
def test_png_info_rejects_malformed(data: bytes) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.png_info(data)
    assert info.value.code == "bad_image"


def test_png_crc_is_checked() -> None:
    data = bytearray(png())
    data[40] ^= 0xFF  # inside IDAT
    with pytest.raises(P.ProtocolError, match="CRC"):
        P.png_info(bytes(data))


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # 50000 x 50000 RGB would be 7.5 GB decoded; the file is a few hundred bytes.
    bomb = raw_png(50_000, 50_000, zlib.compress(b"\0" * 1_000_000, 9))
    assert len(bomb) < 5000
    with pytest.raises(P.ProtocolError) as info:
        P.check_png(bomb)
    assert info.value.code == "resolution_too_large"
    with pytest.raises(P.ProtocolError) as info:
        P.check_png(raw_png(1000, 1000), P.Limits(max_pixels=500_000))
    assert info.value.code == "image_too_large"


def test_results_and_progress_round_trip() -> None:
    frames = P.build_result("job1", [png(), png()], {"seed": 3}, req="r")
    result = P.parse_result(P.decode(frames, expect=P.SERVER_TYPES))
    assert result.job_id == "job1" and len(result.frames) == 2 and result.meta == {"seed": 3}
    assert result.names == ["0000.png", "0001.png"]
    msg = P.decode(P.build_progress("job1", "denoising", 3, 10, eta_s=1.23456), expect=P.SERVER_TYPES)
    assert msg.header["step"] == 3 and msg.header["total"] == 10 and msg.header["eta_s"] == 1.235
    err = P.decode(P.error_frames("queue_full", "busy", job_id="j"), expect=P.SERVER_TYPES)
    assert err.header["code"] == "queue_full" and err.header["hint"] == P.ERROR_HINTS["queue_full"]


def test_request_id_recovery_from_bad_messages() -> None:
    assert P.request_id([b'{"req": "abc", "v": 7}']) == "abc"
    assert P.request_id([b"garbage"]) is None
    assert P.request_id([b'{"req": "../../"}']) is None


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.5.0.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/fp.sock", True),
        ("inproc://x", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://192.168.1.4:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://gpu-box.example:5555", False),
    ],
)
def test_loopback_detection(address: str, loopback: bool) -> None:
    assert P.is_loopback_address(address) is loopback


def test_bad_addresses() -> None:
    for bad in ("127.0.0.1:5555", "tcp://127.0.0.1", "udp://127.0.0.1:5"):
        with pytest.raises(ValueError):
            P.address_host(bad)


def test_limits_dict_round_trip() -> None:
    lim = P.Limits(max_frames=81)
    assert P.Limits.from_dict({**lim.to_dict(), "unknown": 3, "max_width": "x"}) == lim


def test_non_finite_numbers_are_refused_in_params() -> None:
    with pytest.raises(P.ProtocolError, match="guidance_scale"):
        P.parse_params({"guidance_scale": float("nan")})


def test_rgb8_results_revision_2() -> None:
    w, h = 5, 3
    raw = bytes(range(w * h * 3))
    frames = P.build_result("job1", [raw, raw], {"seed": 1}, frame_format="rgb8", width=w, height=h)
    header = json.loads(frames[0])
    assert header["v"] == 1 and header["parts"][0] == {
        "name": "0000.rgb",
        "role": "frame",
        "kind": "rgb8",
        "width": 5,
        "height": 3,
    }
    result = P.parse_result(P.decode(frames, expect=P.SERVER_TYPES))
    assert (result.frame_format, result.width, result.height) == ("rgb8", 5, 3)
    assert result.frames == [raw, raw] and result.names == ["0000.rgb", "0001.rgb"]
    # the zlib-only PNG writer gives the same pixels Pillow reads
    decoded = Image.open(io.BytesIO(result.png_frames()[0]))
    assert decoded.size == (5, 3) and decoded.mode == "RGB" and decoded.tobytes() == raw
    # a wrong size is refused
    bad = [frames[0], raw[:-1], raw]
    with pytest.raises(P.ProtocolError, match="width\\*height\\*3"):
        P.parse_result(P.decode(bad, expect=P.SERVER_TYPES))
    # revision-1 results (PNG, no kind sizes) still parse, and png_frames() returns them as they are
    old = P.parse_result(P.decode(P.build_result("job1", [png()]), expect=P.SERVER_TYPES))
    assert old.frame_format == "png" and old.width is None and old.png_frames() == old.frames


def test_result_format_in_submit() -> None:
    sub = P.parse_submit(P.decode(P.build_submit(png(), [png()], result_format="rgb8")))
    assert sub.result_format == "rgb8"
    plain = P.build_submit(png(), [png()])
    assert "result_format" not in json.loads(plain[0])  # revision-1 servers see a revision-1 submit
    assert P.parse_submit(P.decode(plain)).result_format == "png"
    with pytest.raises(P.ProtocolError, match="result_format"):
        P.build_submit(png(), [png()], result_format="jpeg")
