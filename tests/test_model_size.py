"""Sizes from the model: the hello's `model_size`, the client's size choice for a camera aspect
(`protocol.fit_model_size`), and the server refusing at submit a size its model cannot take."""

from __future__ import annotations

import io
import json
import math
import time
from typing import Any

import pytest
from PIL import Image

from frameprompt_blender.wire import protocol as P

# ------------------------------------------------------------------------------- the pure size choice


def test_fit_size_keeps_aspect_and_pixel_count() -> None:
    assert P.fit_size(832 / 480, 832 * 480) == (832, 480)
    assert P.fit_size(480 / 832, 832 * 480) == (480, 832)
    w, h = P.fit_size(1.0, 832 * 480)
    assert (w, h) == (624, 624)  # sqrt(399360) = 631.9 -> 624 (nearest multiple of 16 is 624 or 640)
    w, h = P.fit_size(16 / 9, 832 * 480)
    assert w % 16 == 0 and h % 16 == 0
    assert abs(w / h - 16 / 9) < 0.05 and abs(w * h - 832 * 480) / (832 * 480) < 0.05


def test_fit_size_rounds_to_the_multiple() -> None:
    assert P.fit_size(1.0, 64 * 64, multiple=8) == (64, 64)
    assert P.fit_size(1.0, 100 * 100, multiple=16) == (96, 96)  # 100 -> 96
    assert P.fit_size(1.0, 105 * 105, multiple=16) == (112, 112)  # 105 -> 112
    assert P.fit_size(4 / 3, 96 * 64, multiple=16) == (96, 64)  # sqrt(8192)=90.5 ... 90.5 x 67.9 -> 96 x 64
    # never below one multiple, even for an extreme aspect
    assert P.fit_size(100.0, 64 * 64, multiple=16) == (640, 16)


def test_fit_size_clamps_to_the_largest_size_keeping_aspect() -> None:
    # a wide camera at 480P's pixel count, on a model that takes at most 512 a side
    w, h = P.fit_size(2.0, 832 * 480, 16, 512, 512)
    assert (w, h) == (512, 256)
    # the cap itself is floored to the multiple
    w, h = P.fit_size(1.0, 1000 * 1000, 16, 500, 500)
    assert (w, h) == (496, 496)
    # clamping one side scales the other one too
    w, h = P.fit_size(0.5, 512 * 512, 16, 1024, 512)
    assert (w, h) == (256, 512)


def test_fit_size_rejects_nonsense() -> None:
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            P.fit_size(bad, 100)
    with pytest.raises(ValueError):
        P.fit_size(1.0, 0)
    with pytest.raises(ValueError):
        P.fit_size(1.0, 100, multiple=0)


def test_fit_model_size_uses_the_native_pixel_count() -> None:
    ms = P.ModelSize(64, 64, 512, 512, 8, 40)
    assert P.fit_model_size(1.0, ms) == (64, 64)
    assert P.fit_model_size(16 / 9, ms) == (88, 48)  # 85.3 x 48 -> 88 x 48
    wan = P.ModelSize(832, 480, 2048, 2048, 16, 40)
    assert P.fit_model_size(832 / 480, wan) == (832, 480)
    assert P.fit_model_size(9 / 16, wan) == (480, 848)


def test_model_size_round_trips_through_hello_and_tolerates_old_servers() -> None:
    ms = P.ModelSize(96, 64, 512, 512, 16, 40)
    assert P.ModelSize.from_hello({"model_size": ms.to_dict()}) == ms
    assert P.ModelSize.from_hello({"model_size": json.loads(json.dumps(ms.to_dict()))}) == ms
    assert P.ModelSize.from_hello({}) is None  # revision 1/2 server
    assert P.ModelSize.from_hello({"model_size": None}) is None  # no model loaded (echo runner)
    assert P.ModelSize.from_hello({"model_size": {"native_width": 64}}) is None
    assert P.ModelSize.from_hello({"model_size": {**ms.to_dict(), "max_width": True}}) is None
    assert P.ModelSize.from_hello(None) is None
    assert P.ModelSize.from_dict({**ms.to_dict(), "window_frames": None}) == P.ModelSize(96, 64, 512, 512, 16)


def test_check_model_size_refuses_with_a_hint_naming_largest_and_native() -> None:
    ms = P.ModelSize(96, 64, 512, 512, 16, 40)
    P.check_model_size(512, 512, ms)
    P.check_model_size(96, 64, ms)
    with pytest.raises(P.ProtocolError) as info:
        P.check_model_size(832, 480, ms)
    e = info.value
    assert e.code == "resolution_too_large"
    assert "512x512" in e.message and "512x512" in e.hint and "96x64" in e.hint
    with pytest.raises(P.ProtocolError) as info:
        P.check_model_size(100, 64, ms)
    assert info.value.code == "bad_layout" and "16" in info.value.message and "96x64" in info.value.hint


# ------------------------------------------------------------------- a server with a fake model size


class SizedRunner:
    def __init__(self, device: str) -> None:
        self.device = device

    def capabilities(self) -> dict[str, Any]:
        return {
            "model": "sized",
            "model_size": {
                "native_width": 832,
                "native_height": 480,
                "max_width": 4096,
                "max_height": 4096,
                "size_multiple": 16,
                "window_frames": 40,
            },
        }

    def __call__(self, job: Any, ctx: Any) -> list[Image.Image]:
        size = (job.params.width or job.reference.width, job.params.height or job.reference.height)
        return [p.resize(size) for p in job.poses]


def _png(size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (9, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def test_hello_clamps_the_model_size_to_the_server_limits(tmp_path) -> None:
    from frameprompt.server import Server, ServerConfig

    limits = P.Limits(max_width=1000, max_height=600, max_pixels=1000 * 600)
    cfg = ServerConfig(bind="tcp://127.0.0.1:*", jobs_dir=tmp_path / "jobs", fsync=False, limits=limits)
    from frameprompt_blender.wire.client import FramePromptClient, RemoteError

    with Server(cfg, SizedRunner) as server:
        server.wait_ready(10)
        with FramePromptClient(server.address, timeout=5.0) as client:
            info = client.hello()
            assert info["revision"] >= 3
            assert info["model_size"] == {
                "native_width": 832,
                "native_height": 480,
                "max_width": 992,  # the limit 1000, floored to the multiple 16
                "max_height": 592,
                "size_multiple": 16,
                "window_frames": 40,
            }
            assert client.model_size == P.ModelSize(832, 480, 992, 592, 16, 40)
            # the default size (the reference's) is checked too
            job = client.submit(_png((24, 16)), [_png((24, 16))])
            with pytest.raises(RemoteError) as err:
                job.result(10)
            assert err.value.code == "bad_layout" and "16" in err.value.message
            ok = client.submit(_png((32, 16)), [_png()], width=992, height=592)
            assert len(ok.result(20).frames) == 1


# -------------------------------------------------------------------------------- the tiny real model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    testing = pytest.importorskip("frameprompt.testing")
    path = testing.tiny_pipeline_dir(tmp_path_factory.mktemp("tiny") / "model")
    return path


def test_tiny_model_hello_and_a_too_large_size_refused_at_submit(tiny_model, tmp_path) -> None:
    from frameprompt.server import Server, ServerConfig, resolve_runner_factory

    from frameprompt_blender.wire.client import FramePromptClient, RemoteError

    # the tiny model says nothing of its size: Wan2.1's 480P, 832x480, scaled into what its rotary table
    # takes (rope_max_seq_len 32 x patch 2 x VAE 8 = 512 a side)
    cfg = ServerConfig(bind="tcp://127.0.0.1:*", jobs_dir=tmp_path / "jobs", fsync=False)
    with Server(cfg, resolve_runner_factory("pipeline", str(tiny_model))) as server:
        server.wait_ready(120)
        with FramePromptClient(server.address, timeout=10.0) as client:
            info = client.hello()
            assert info["model_size"] == {
                "native_width": 512,
                "native_height": 288,
                "max_width": 512,
                "max_height": 512,
                "size_multiple": 16,
                "window_frames": 40,
            }
            t0 = time.monotonic()
            job = client.submit(_png((32, 32)), [_png((32, 32))] * 4, steps=1, width=528, height=512)
            with pytest.raises(RemoteError) as err:
                job.result(30)
            assert time.monotonic() - t0 < 5, "refused at submit, not after the preparation"
            e = err.value
            assert e.code == "resolution_too_large"
            assert "512x512" in e.hint and "512x288" in e.hint, e.hint
            assert job.job_id is None or client.status(job.job_id)["state"] != "running"


def test_tiny_model_native_size_comes_from_its_training_info(tiny_model, tmp_path) -> None:
    from frameprompt.server import Server, ServerConfig, resolve_runner_factory

    from frameprompt_blender.wire.client import FramePromptClient

    (tiny_model / "frameprompt_training.json").write_text(json.dumps({"width": 96, "height": 64}))
    try:
        cfg = ServerConfig(bind="tcp://127.0.0.1:*", jobs_dir=tmp_path / "jobs", fsync=False)
        with Server(cfg, resolve_runner_factory("pipeline", str(tiny_model))) as server:
            server.wait_ready(120)
            with FramePromptClient(server.address, timeout=10.0) as client:
                ms = P.ModelSize.from_hello(client.hello())
                assert ms == P.ModelSize(96, 64, 512, 512, 16, 40)
    finally:
        (tiny_model / "frameprompt_training.json").unlink()


def test_embedded_model_size() -> None:
    """The embedded model: 64x64 from its frameprompt_training.json; VAE 4x, patch 2, rope 64 -> 512."""
    from frameprompt.loading import DEFAULT_MODEL_DIR
    from frameprompt.server.runners import native_size_of

    if not (DEFAULT_MODEL_DIR / "frameprompt_training.json").is_file():
        pytest.skip("the embedded model is not installed in this build")
    info = json.loads((DEFAULT_MODEL_DIR / "frameprompt_training.json").read_text())
    assert native_size_of(None) == (info["width"], info["height"])


# --------------------------------------------------------------- frames per window: the rotary table's rows


def _configs(model_dir) -> tuple[Any, Any]:
    """The VAE and transformer of a diffusers model folder, their configs only (no weights)."""
    from types import SimpleNamespace

    def cfg(sub: str) -> Any:
        return SimpleNamespace(
            config=SimpleNamespace(**json.loads((model_dir / sub / "config.json").read_text()))
        )

    return cfg("vae"), cfg("transformer")


def test_fit_window_frames_keeps_the_latent_frames_within_the_table() -> None:
    from types import SimpleNamespace

    from frameprompt.inference.windows import fit_overlap_frames, fit_window_frames

    def pair(t: int, rope: int) -> tuple[Any, Any]:
        vae = SimpleNamespace(config=SimpleNamespace(scale_factor_temporal=t, scale_factor_spatial=8))
        tr = SimpleNamespace(config=SimpleNamespace(patch_size=(1, 2, 2), rope_max_seq_len=rope))
        return vae, tr

    assert fit_window_frames(*pair(4, 1024), 40) == 40  # Wan2.1: 21 latent frames
    assert fit_window_frames(*pair(1, 64), 40) == 28  # T=1: 1 + 2N <= 64
    assert fit_window_frames(*pair(4, 8), 40) == 12  # 1 + N/2 <= 8
    assert fit_window_frames(*pair(4, 8), 10) == 8  # a multiple of 4, not more than asked
    assert fit_window_frames(*pair(4, 2), 40) == 4  # never below one frame multiple
    assert fit_overlap_frames(12, 8, 4) == 8
    assert fit_overlap_frames(8, 8, 4) == 4
    assert fit_overlap_frames(4, 8, 4) == 0


def test_embedded_model_window_fits_its_position_table() -> None:
    from frameprompt.inference.windows import fit_window_frames
    from frameprompt.loading import DEFAULT_MODEL_DIR
    from frameprompt.method import SequenceLayout
    from frameprompt.server.runners import DEFAULT_OVERLAP_FRAMES, DEFAULT_WINDOW_FRAMES

    if not (DEFAULT_MODEL_DIR / "transformer" / "config.json").is_file():
        pytest.skip("the embedded model is not installed in this build")
    vae, tr = _configs(DEFAULT_MODEL_DIR)
    n = fit_window_frames(vae, tr, DEFAULT_WINDOW_FRAMES)
    assert 0 < n < DEFAULT_WINDOW_FRAMES
    h = w = 64
    for carried in (0, min(DEFAULT_OVERLAP_FRAMES, n - 4)):
        layout = SequenceLayout.for_models(n, h, w, vae, tr, carried_frames=carried)
        assert layout.latent_frames // tr.config.patch_size[0] <= tr.config.rope_max_seq_len
    frame_multiple, _ = SequenceLayout.multiples_for(vae, tr)
    longer = SequenceLayout.for_models(n + frame_multiple, h, w, vae, tr)
    assert longer.latent_frames // tr.config.patch_size[0] > tr.config.rope_max_seq_len


@pytest.fixture(scope="module")
def short_table_model(tmp_path_factory):
    """The tiny model with an 8-row rotary table: 1 + N/4*2 latent frames fit for N <= 12 (and 128 px a
    side); the rows are built from the config at load, not stored with the weights."""
    testing = pytest.importorskip("frameprompt.testing")
    path = testing.tiny_pipeline_dir(tmp_path_factory.mktemp("short") / "model")
    cfg_file = path / "transformer" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["rope_max_seq_len"] = 8
    cfg_file.write_text(json.dumps(cfg))
    return path


def test_long_job_runs_in_windows_the_position_table_takes(short_table_model, tmp_path) -> None:
    from frameprompt.server import Server, ServerConfig, resolve_runner_factory

    from frameprompt_blender.wire.client import FramePromptClient

    cfg = ServerConfig(
        bind="tcp://127.0.0.1:*",
        jobs_dir=tmp_path / "jobs",
        fsync=False,
        window_frames=40,
        long_animation=True,
    )
    factory = resolve_runner_factory("pipeline", str(short_table_model), window_frames=40, overlap_frames=8)
    with Server(cfg, factory) as server:
        server.wait_ready(120)
        with FramePromptClient(server.address, timeout=60.0) as client:
            info = client.hello()
            ms = P.ModelSize.from_hello(info)
            assert ms is not None and ms.window_frames == 12, info["model_size"]
            assert ms.max_width == ms.max_height == 128
            assert info["model_info"]["overlap_frames"] == 8
            # 20 frames: more than the 12-frame window (and a 20-frame window, 11 latent frames, would
            # not fit the 8 rows): windows 0-11, then 8 carried + 4 new twice
            job = client.submit(_png((32, 32)), [_png((32, 32))] * 20, steps=1, width=32, height=32)
            result = job.result(300)
            assert len(result.frames) == 20
            assert all(Image.open(io.BytesIO(f)).size == (32, 32) for f in result.frames)
