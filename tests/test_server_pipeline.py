"""End to end with the real FramePromptPipeline (tiny random weights, CPU): client -> server -> model."""

from __future__ import annotations

import io

import pytest
from frameprompt.server import Server, ServerConfig, resolve_runner_factory
from PIL import Image

from frameprompt_blender.wire.client import FramePromptClient, RemoteError

pytestmark = pytest.mark.slow


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_tiny_pipeline_round_trip_and_cancel(tmp_path) -> None:
    testing = pytest.importorskip("frameprompt.testing")
    if not hasattr(testing, "tiny_pipeline_dir"):
        pytest.skip("frameprompt.testing.tiny_pipeline_dir does not exist yet")
    model = testing.tiny_pipeline_dir(tmp_path / "model")
    reference, poses = testing.demo_inputs(num_frames=4, size=32)
    config = ServerConfig(bind="tcp://127.0.0.1:*", jobs_dir=tmp_path / "jobs", fsync=False)
    server = Server(config, resolve_runner_factory("pipeline", str(model)))
    server.start()
    try:
        server.wait_ready(120)
        with FramePromptClient(server.address, timeout=10.0) as client:
            info = client.hello()
            assert info["model"] == "model" and info["model_info"]["frame_multiple"] == 1
            job = client.submit(_png(reference), [_png(p) for p in poses], steps=2, seed=7)
            events = list(job.events(timeout=120))
            assert events[-1].type == "result", events[-1].header
            steps = [
                e.header["step"] for e in events if e.type == "progress" and e.header["phase"] == "denoising"
            ]
            assert steps == [0, 1, 2]
            result = job.result()
            assert len(result.frames) == 4 and result.meta["seed"] == 7
            assert Image.open(io.BytesIO(result.frames[0])).size == (32, 32)

            # the pipeline callback honours a cancel at the next step
            long_job = client.submit(_png(reference), [_png(p) for p in poses], steps=200, seed=1)
            for ev in long_job.events(timeout=120):
                if ev.type == "progress" and ev.header.get("step", 0) >= 1:
                    break
            long_job.cancel()
            with pytest.raises(RemoteError) as info:
                long_job.result(60)
            assert info.value.code == "cancelled"
            assert long_job.progress["step"] < 200

            # a size the model cannot lay out is a clean error, and the worker goes on
            bad = client.submit(_png(reference), [_png(p) for p in poses], steps=1, width=40, height=32)
            with pytest.raises(RemoteError) as info:
                bad.result(60)
            assert info.value.code != "internal_error", info.value
            again = client.submit(_png(reference), [_png(p) for p in poses], steps=1, seed=7)
            assert len(again.result(120).frames) == 4
    finally:
        server.stop()


def test_any_frame_count_is_split_into_windows(tmp_path) -> None:
    from frameprompt.testing import demo_inputs, tiny_pipeline_dir

    model = tiny_pipeline_dir(tmp_path / "model")
    reference, poses = demo_inputs(num_frames=11, size=32)
    config = ServerConfig(
        bind="tcp://127.0.0.1:*",
        jobs_dir=tmp_path / "jobs",
        fsync=False,
        window_frames=8,
        long_animation=True,
    )
    runner = resolve_runner_factory("pipeline", str(model), window_frames=8, overlap_frames=4)
    server = Server(config, runner)
    server.start()
    try:
        server.wait_ready(120)
        with FramePromptClient(server.address, timeout=10.0) as client:
            for count in (3, 11):  # below one window and not a multiple of 4; two windows
                job = client.submit(_png(reference), [_png(p) for p in poses[:count]], steps=1, seed=3)
                events = list(job.events(timeout=120))
                assert events[-1].type == "result", events[-1].header
                totals = {
                    e.header["total"]
                    for e in events
                    if e.type == "progress" and e.header["phase"] == "denoising"
                }
                assert totals == {1 if count <= 8 else 2}  # one step per window
                assert len(job.result().frames) == count
    finally:
        server.stop()
