"""Step caching through diffusers' cache hooks, on tiny models loaded through `load_pipeline`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from frameprompt.errors import InputError
from frameprompt.inference.context_cache import mark_trained_with_context_cache
from frameprompt.inference.step_cache import (
    STEP_CACHES,
    BlockCounter,
    StepCacheSpec,
    calibrate_mag_ratios,
    load_mag_ratios,
    parse_step_cache,
    save_mag_ratios,
)
from frameprompt.loading import load_pipeline
from frameprompt.testing import demo_inputs, tiny_pipeline

STEPS = 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache_model_dir(tmp_path_factory):
    """A tiny model marked as trained in cache mode, so the context K/V cache runs exactly."""
    pipe = tiny_pipeline(seed=3)
    mark_trained_with_context_cache(pipe.transformer)
    path = tmp_path_factory.mktemp("cache_model") / "model"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(cache_model_dir):
    pipe = load_pipeline(cache_model_dir, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, step_cache=None, **kwargs):
    reference, poses = demo_inputs(4, 32)
    counter = BlockCounter(pipe.transformer)
    try:
        out = pipe(
            reference,
            poses,
            num_inference_steps=STEPS,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
            step_cache=step_cache,
            **kwargs,
        )
    finally:
        counter.close()
    return out.frames, counter.evaluations


def test_parse_step_cache_values_and_defaults():
    assert parse_step_cache(None) is None
    assert parse_step_cache("none") is None
    assert parse_step_cache("first-block:0.2") == StepCacheSpec("first-block", 0.2)
    assert parse_step_cache("MAG").name == "mag"
    assert parse_step_cache("taylorseer:4") == StepCacheSpec("taylorseer", 4.0)
    assert str(parse_step_cache("taylorseer:4")) == "taylorseer:4"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("teacache", "unknown step cache"),
        ("first-block:abc", "not a number"),
        ("first-block:1.5", "between 0 and 1"),
        ("taylorseer:2.5", "integer"),
        ("taylorseer:0", "integer"),
    ],
)
def test_parse_step_cache_rejects_bad_values_with_a_hint(text, named):
    with pytest.raises(InputError, match=named) as error:
        parse_step_cache(text)
    assert error.value.hint


def test_the_wire_protocol_knows_the_same_step_caches():
    from frameprompt_blender.wire.protocol import STEP_CACHES as WIRE_STEP_CACHES

    assert tuple(WIRE_STEP_CACHES) == STEP_CACHES


def test_context_cache_and_first_block_cache_compose(pipe):
    full, full_evals = generate(pipe)
    assert full_evals == STEPS + 1  # every step + the one context extraction pass
    # a threshold nothing falls under: every block runs, the output is the uncached one
    exact, exact_evals = generate(pipe, "first-block:0.000001")
    assert exact_evals == full_evals
    np.testing.assert_allclose(exact, full, atol=1e-6)
    # a threshold everything falls under: after the first step only the first of the 2 blocks runs
    skipped, skipped_evals = generate(pipe, "first-block:0.99")
    assert skipped_evals < full_evals - 2
    assert np.isfinite(skipped).all() and not np.allclose(skipped, full, atol=1e-4)
    assert not pipe.transformer.is_cache_enabled  # the hooks went with the generation


def test_taylorseer_interval_one_is_exact_and_longer_intervals_skip(pipe):
    full, full_evals = generate(pipe)
    exact, exact_evals = generate(pipe, "taylorseer:1")
    np.testing.assert_allclose(exact, full, atol=1e-6)
    assert exact_evals == full_evals
    _, fewer = generate(pipe, "taylorseer:3")
    assert fewer < full_evals - 2


def test_step_cache_keeps_one_state_per_cfg_branch(pipe):
    text = torch.randn(1, 7, pipe.transformer.config.text_dim, generator=torch.Generator().manual_seed(1))
    cfg = dict(prompt_embeds=text, negative_prompt_embeds=torch.zeros_like(text), guidance_scale=4.0)
    full, full_evals = generate(pipe, **cfg)
    exact, exact_evals = generate(pipe, "first-block:0.000001", **cfg)
    assert full_evals == exact_evals == 2 * (STEPS + 1)
    np.testing.assert_allclose(exact, full, atol=1e-6)


def test_step_cache_without_the_context_cache(tiny_model_dir):
    """A model trained without cache mode: the step cache acts on the whole sequence."""
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    full, full_evals = generate(pipe)
    assert full_evals == STEPS
    exact, _ = generate(pipe, "first-block:0.000001")
    np.testing.assert_allclose(exact, full, atol=1e-6)
    _, fewer = generate(pipe, "first-block:0.99")
    assert fewer < STEPS - 2


def test_mag_cache_needs_ratios_then_uses_the_calibrated_ones(cache_model_dir, tmp_path):
    pipe = load_pipeline(cache_model_dir, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.mag_ratios is None
    with pytest.raises(InputError, match="magnitude ratios") as error:
        generate(pipe, "mag")
    assert "calibrate" in error.value.hint
    assert not pipe.transformer.is_cache_enabled

    reference, poses = demo_inputs(4, 32, seed=5)
    ratios = calibrate_mag_ratios(
        pipe, STEPS, reference_image=reference, pose_frames=poses, generator=torch.Generator().manual_seed(0)
    )
    assert len(ratios) == STEPS and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert not pipe.transformer.is_cache_enabled

    # stored with the model, found by the loader
    import shutil

    model = shutil.copytree(cache_model_dir, tmp_path / "model")
    save_mag_ratios(model, ratios, steps=STEPS)
    assert load_mag_ratios(model) == pytest.approx(ratios, abs=1e-6)
    again = load_pipeline(model, device="cpu")
    again.set_progress_bar_config(disable=True)
    full, full_evals = generate(again)
    cached, cached_evals = generate(again, "mag:0.9")
    assert cached_evals < full_evals
    assert np.isfinite(cached).all()


def test_a_damaged_mag_ratios_file_is_named(tmp_path):
    (tmp_path / "mag_ratios.json").write_text('{"mag_ratios": "fast"}')
    with pytest.raises(InputError, match="mag_ratios"):
        load_mag_ratios(tmp_path)


def test_hooks_are_removed_when_a_generation_is_cancelled(pipe):
    from frameprompt.inference.pipeline import GenerationCancelled

    def cancel(p, i, t, kwargs):
        p._interrupt = True
        return kwargs

    with pytest.raises(GenerationCancelled):
        generate(pipe, "first-block:0.5", callback_on_step_end=cancel)
    assert not pipe.transformer.is_cache_enabled
    full, _ = generate(pipe)
    again, _ = generate(pipe)
    np.testing.assert_array_equal(full, again)
