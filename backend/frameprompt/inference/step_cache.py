"""Step caching: skip transformer work on denoising steps whose output barely changes.

All three are diffusers' own cache hooks (`diffusers.hooks`), switched on around one generation
with `step_cache(transformer, config)` and removed after it, so every generation starts from a fresh
cache state:

    first-block  First-Block Cache (`FirstBlockCacheConfig`, after TeaCache): the first block always
                 runs; when its residual changed by less than `threshold` (relative mean absolute
                 difference) since the last full step, the other blocks are skipped and their cached
                 residual is added instead.
    mag          MagCache (`MagCacheConfig`): skips whole steps while the accumulated error predicted
                 by per-step magnitude ratios stays below `threshold`. The ratios are model-specific;
                 diffusers ships none for Wan, so `calibrate_mag_ratios` measures them with MagCache's
                 own `calibrate=True` mode and `save_mag_ratios` stores them in the model folder
                 (`mag_ratios.json`), where `load_pipeline` finds them.
    taylorseer   TaylorSeer (`TaylorSeerCacheConfig`): the attention and FFN outputs of every block
                 are computed every `interval`-th step and extrapolated (first-order Taylor) between.

Composition with the context K/V cache (`frameprompt.inference.context_cache`): the pipeline
extracts the context's K/V first, with no step cache installed (every block must run for it), and
installs the step cache only for the denoising loop, where the transformer sees the target tokens
alone. Each classifier-free-guidance branch keeps its own cache state (`cache_context(branch)`).

`--cache NAME[:VALUE]` is parsed by `parse_step_cache`; VALUE is the threshold (first-block, mag)
or the refresh interval in steps (taylorseer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import torch
from diffusers import WanTransformer3DModel
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK

from frameprompt.errors import InputError

MAG_RATIOS_FILE = "mag_ratios.json"
# Measured with benchmarks/step_cache.py (docs/performance.md): at 50 steps each keeps the output
# above 40 dB PSNR against uncached denoising on the embedded model at 2-2.5x less denoising time.
DEFAULT_VALUES = {"first-block": 0.2, "mag": 0.3, "taylorseer": 4}
STEP_CACHES = tuple(DEFAULT_VALUES)
# TaylorSeer hooks the modules whose outputs it extrapolates; diffusers' default patterns look for
# modules named `...attn`, which Wan's `attn1`/`attn2` do not match.
WAN_TAYLORSEER_MODULES = [r"blocks\.\d+\.(attn1|attn2|ffn)"]

StepCacheConfig: TypeAlias = FirstBlockCacheConfig | MagCacheConfig | TaylorSeerCacheConfig


@dataclass(frozen=True)
class StepCacheSpec:
    """A parsed `--cache NAME[:VALUE]`: `name` is one of `STEP_CACHES`, `value` the threshold
    (first-block, mag) or the refresh interval (taylorseer)."""

    name: str
    value: float

    def __str__(self) -> str:
        value = int(self.value) if self.name == "taylorseer" else self.value
        return f"{self.name}:{value}"


def parse_step_cache(text: str | StepCacheSpec | None) -> StepCacheSpec | None:
    """`"first-block"`, `"mag:0.08"`, `"taylorseer:4"`, `"none"` or None -> a spec (None: no cache)."""
    if text is None or isinstance(text, StepCacheSpec):
        return text
    name, _, raw = str(text).strip().partition(":")
    name = name.strip().lower()
    if name in ("", "none", "off"):
        return None
    hint = "use --cache " + ", ".join(f"{n}[:{v}]" for n, v in DEFAULT_VALUES.items()) + " or none"
    if name not in DEFAULT_VALUES:
        raise InputError(f"unknown step cache {name!r}", hint)
    if not raw.strip():
        return StepCacheSpec(name, float(DEFAULT_VALUES[name]))
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"step cache value {raw!r} in {text!r} is not a number", hint) from None
    if name == "taylorseer":
        if value != int(value) or value < 1:
            raise InputError(
                f"the taylorseer value is the refresh interval in steps, an integer >= 1, not {raw!r}",
                "use e.g. --cache taylorseer:3",
            )
    elif not 0.0 < value < 1.0:
        raise InputError(
            f"the {name} threshold must be between 0 and 1, not {raw!r}",
            f"use e.g. --cache {name}:{DEFAULT_VALUES[name]} (larger: faster, less exact)",
        )
    return StepCacheSpec(name, value)


def step_cache_config(
    spec: StepCacheSpec,
    num_inference_steps: int,
    *,
    mag_ratios: list[float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> StepCacheConfig:
    """diffusers' cache config for `spec` and this many denoising steps."""
    if spec.name == "first-block":
        return FirstBlockCacheConfig(threshold=spec.value)
    if spec.name == "mag":
        if not mag_ratios:
            raise InputError(
                "MagCache needs magnitude ratios measured on this model, and the model folder has no "
                f"{MAG_RATIOS_FILE}",
                "measure them once with `frameprompt calibrate --model PATH` "
                "(writes PATH/mag_ratios.json), or use --cache first-block / taylorseer",
            )
        return MagCacheConfig(
            threshold=spec.value, num_inference_steps=num_inference_steps, mag_ratios=list(mag_ratios)
        )
    return TaylorSeerCacheConfig(
        cache_interval=int(spec.value),
        disable_cache_before_step=3,
        max_order=1,
        taylor_factors_dtype=dtype,
        cache_identifiers=WAN_TAYLORSEER_MODULES,
    )


@contextmanager
def step_cache(transformer: WanTransformer3DModel, config: StepCacheConfig | None) -> Iterator[None]:
    """Install diffusers' cache hooks for the duration of one denoising loop (None: nothing).

    After a MagCache run in `calibrate=True` mode, `config.mag_ratios` holds the measured ratios of
    the conditional branch (`calibrate_mag_ratios`).
    """
    if config is None:
        yield
        return
    if transformer.is_cache_enabled:
        transformer.disable_cache()  # a previous generation that did not finish left its hooks
    transformer.enable_cache(config)
    try:
        yield
        if isinstance(config, MagCacheConfig) and config.calibrate:
            config.mag_ratios = _calibrated_ratios(transformer)
    finally:
        transformer.disable_cache()


# --- MagCache ratios, measured per model ---------------------------------------------------------
def load_mag_ratios(model_dir: str | os.PathLike | None) -> list[float] | None:
    """The ratios stored in `model_dir/mag_ratios.json`, or None."""
    if model_dir is None:
        return None
    path = Path(model_dir) / MAG_RATIOS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    ratios = data.get("mag_ratios") if isinstance(data, dict) else None
    if not isinstance(ratios, list) or not ratios or not all(isinstance(r, int | float) for r in ratios):
        raise InputError(
            f"{path} has no list of numbers under 'mag_ratios'",
            "delete it and calibrate again (frameprompt calibrate --model PATH)",
        )
    return [float(r) for r in ratios]


def save_mag_ratios(model_dir: str | os.PathLike, ratios: list[float], **about: Any) -> Path:
    """Write `model_dir/mag_ratios.json` (the ratios and how they were measured)."""
    path = Path(model_dir) / MAG_RATIOS_FILE
    path.write_text(json.dumps({"mag_ratios": [round(r, 6) for r in ratios], **about}, indent=1) + "\n")
    return path


def _calibrated_ratios(transformer: WanTransformer3DModel) -> list[float]:
    # diffusers prints the calibration and clears it when the last step ends;
    # `calibrate_mag_ratios` announces one step more than it runs, so the ratios are still in the
    # tail block's hook state here
    hook = transformer.blocks[-1]._diffusers_hook.get_hook(_MAG_CACHE_BLOCK_HOOK)
    states = hook.state_manager._state_cache
    if "cond" not in states:
        raise RuntimeError("the MagCache calibration saw no conditional denoising step")
    return list(states["cond"].calibration_ratios)


def calibrate_mag_ratios(pipe: Any, num_inference_steps: int, **call: Any) -> list[float]:
    """Run one generation with MagCache's `calibrate=True` mode and return its per-step ratios.

    `call` holds the other `FramePromptPipeline.__call__` arguments (inputs, context_cache ...): the
    ratios belong to the mode they are measured in.
    """
    config = MagCacheConfig(calibrate=True, num_inference_steps=num_inference_steps + 1)
    pipe(num_inference_steps=num_inference_steps, step_cache=config, output_type="latent", **call)
    ratios = list(config.mag_ratios or [])
    if len(ratios) != num_inference_steps:
        raise RuntimeError(f"MagCache calibration measured {len(ratios)} of {num_inference_steps} steps")
    return ratios


# --- counting the work a step cache saves --------------------------------------------------------
class BlockCounter:
    """Counts transformer blocks whose FFN actually ran (a skipped or extrapolated block does not
    reach its FFN's last linear layer). `evaluations` is that count in whole-transformer units."""

    def __init__(self, transformer: WanTransformer3DModel) -> None:
        self.num_blocks = len(transformer.blocks)
        self.blocks_run = 0
        self._handles = [block.ffn.net[-1].register_forward_hook(self._count) for block in transformer.blocks]

    def _count(self, *_: Any) -> None:
        self.blocks_run += 1

    @property
    def evaluations(self) -> float:
        return self.blocks_run / self.num_blocks

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
