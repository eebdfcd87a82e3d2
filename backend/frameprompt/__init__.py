"""FramePrompt: in-context controllable animation on Wan2.1, with zero structural changes.

The public API, as diffusers users expect it::

    from frameprompt import FramePromptPipeline, load_pipeline

Imported on first use, so that commands which never touch the model (`frameprompt keys`) do not
load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "FramePromptPipeline": "frameprompt.inference.pipeline",
    "FramePromptPipelineOutput": "frameprompt.inference.pipeline",
    "SequenceLayout": "frameprompt.method",
    "load_pipeline": "frameprompt.loading",
    "load_lora": "frameprompt.loading",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'frameprompt' has no attribute {name!r}")
