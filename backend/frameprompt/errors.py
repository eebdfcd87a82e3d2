"""Errors users see: each one says what is wrong and how to fix it.

The base class is the add-on's (`frameprompt_blender.core.errors`), so an error raised in the
backend and one raised in Blender look and behave the same.
"""

from __future__ import annotations

from frameprompt_blender.core.errors import FramePromptError

__all__ = [
    "CorruptWeightsError",
    "FramePromptError",
    "IncompatibleModelError",
    "InputError",
    "LayoutError",
    "ModelNotFoundError",
]


class LayoutError(FramePromptError, ValueError):
    code = "bad_layout"


class ModelNotFoundError(FramePromptError, FileNotFoundError):
    code = "model_not_found"


class IncompatibleModelError(FramePromptError, ValueError):
    code = "incompatible_model"


class CorruptWeightsError(FramePromptError, ValueError):
    code = "corrupt_weights"


class InputError(FramePromptError, ValueError):
    code = "bad_input"
