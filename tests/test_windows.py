"""Long animations: window plan, carried frames, stitching without duplicates or gaps."""

import numpy as np
import pytest
import torch
from frameprompt import method
from frameprompt.errors import LayoutError
from frameprompt.inference.context_cache import mark_trained_with_context_cache
from frameprompt.inference.pipeline import FramePromptPipeline
from frameprompt.inference.windows import plan_windows, window_poses
from frameprompt.testing import demo_inputs, tiny_pipeline


@pytest.mark.parametrize("total", [1, 3, 4, 5, 39, 40, 41, 71, 72, 73, 100, 257])
@pytest.mark.parametrize(("window", "overlap"), [(40, 8), (40, 0), (8, 4), (12, 8)])
def test_plan_covers_every_frame_once_in_order(total, window, overlap):
    plan = plan_windows(total, window, overlap)
    generated = [g for w in plan for g in w.global_new]
    assert generated == list(range(total))
    for previous, w in zip([None, *plan], plan, strict=False):
        assert w.num_frames % 4 == 0 and 0 < w.num_frames <= window
        assert w.carried % 4 == 0 and w.carried + w.new_frames <= w.num_frames
        # the layout of every window is valid
        method.SequenceLayout(w.num_frames, 32, 32, carried_frames=w.carried)
        if previous is None:
            assert (w.start, w.carried) == (0, 0)
        else:
            assert w.carried == overlap
            # carried frames are the last frames generated before this window
            assert w.start + w.carried == previous.global_new.stop


def test_plan_for_100_frames_of_40_with_8_overlap():
    plan = plan_windows(100, 40, 8)
    assert [(w.start, w.num_frames, w.carried, w.new_frames) for w in plan] == [
        (0, 40, 0, 40),
        (32, 40, 8, 32),
        (64, 36, 8, 28),
    ]


@pytest.mark.parametrize(("window", "overlap"), [(6, 0), (8, 3), (8, 8), (8, -4)])
def test_plan_rejects_windows_and_overlaps_that_do_not_fit_the_vae(window, overlap):
    with pytest.raises(LayoutError):
        plan_windows(20, window, overlap)


def test_window_poses_pad_by_repeating_the_last_pose():
    poses = list(range(15))
    w = plan_windows(15, 8, 4)[-1]
    assert window_poses(poses, w) == [8, 9, 10, 11, 12, 13, 14, 14]


def test_layout_with_carried_frames_extends_the_context():
    layout = method.SequenceLayout(8, 32, 32, carried_frames=4)
    assert (layout.latent_frames, layout.context_latent_frames, layout.target_latent_frames) == (5, 4, 1)
    mask = method.build_context_mask(layout)
    assert mask[0, :, :, 0, 0].tolist() == [[1, 1, 1, 1, 0]] * 4
    ref, poses, given = torch.ones(1, 3, 1, 8, 8), torch.ones(1, 3, 8, 8, 8), torch.ones(1, 3, 4, 8, 8)
    cond = method.condition_pixels(ref, poses, given)
    assert cond.shape[2] == layout.pixel_frames
    assert cond[:, :, : 1 + 8 + 4].eq(1).all() and cond[:, :, 13:].eq(0).all()


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def test_three_window_generation_has_no_duplicated_or_missing_frames(pipe, monkeypatch):
    reference, poses = demo_inputs(15, 32)
    calls = []
    original = FramePromptPipeline.__call__

    def spy(self, reference_image, pose_frames, **kw):
        given = kw.get("given_frames")
        out = original(self, reference_image, pose_frames, **kw)
        calls.append((list(pose_frames), None if given is None else [g.copy() for g in given], out.frames[0]))
        return out

    monkeypatch.setattr(FramePromptPipeline, "__call__", spy)
    out = pipe.generate_long(
        reference, poses, window_frames=8, overlap_frames=4, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), output_type="np",
    )  # fmt: skip
    video = out.frames[0]
    plan = plan_windows(15, 8, 4)
    assert len(calls) == len(plan) == 3
    assert video.shape == (15, 32, 32, 3)

    for w, (window_pose_frames, given, window_out) in zip(plan, calls, strict=True):
        # poses: target position j of the window is global frame start + j
        assert (
            window_pose_frames[: min(w.num_frames, 15 - w.start)] == poses[w.start : w.start + w.num_frames]
        )
        assert window_out.shape[0] == w.num_frames
        # the stitched video holds exactly this window's new frames at their global positions
        np.testing.assert_array_equal(video[w.global_new.start : w.global_new.stop], window_out[w.new_slice])
        if w.index == 0:
            assert given is None
        else:
            # carried frames are the previous windows' output frames, exactly
            assert len(given) == w.carried == 4
            np.testing.assert_array_equal(np.stack(given), video[w.start : w.start + w.carried])
            prev = plan[w.index - 1]
            prev_out = calls[w.index - 1][2]
            np.testing.assert_array_equal(np.stack(given), prev_out[prev.new_slice][-w.carried :])
    # joins: frames on either side of each join are different frames, not a repeated one
    for w in plan[1:]:
        join = w.global_new.start
        assert not np.array_equal(video[join - 1], video[join])
    assert len({video[i].tobytes() for i in range(15)}) == 15


def test_long_generation_in_cache_mode_equals_uncached_and_outputs_pil():
    p = tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    mark_trained_with_context_cache(p.transformer)
    reference, poses = demo_inputs(10, 32)
    run = dict(window_frames=8, overlap_frames=4, num_inference_steps=2)
    a = p.generate_long(
        reference,
        poses,
        generator=torch.Generator().manual_seed(3),
        context_cache=True,
        output_type="np",
        **run,
    )
    b = p.generate_long(
        reference,
        poses,
        generator=torch.Generator().manual_seed(3),
        context_cache=False,
        output_type="np",
        **run,
    )
    assert a.frames.shape == (1, 10, 32, 32, 3)
    assert np.abs(a.frames - b.frames).max() <= 1e-3
    pil = p.generate_long(reference, poses[:3], generator=torch.Generator().manual_seed(3), **run).frames[0]
    assert len(pil) == 3 and pil[0].size == (32, 32)
