"""Errors users see: each one says what is wrong and how to fix it."""

from __future__ import annotations


class FramePromptError(Exception):
    """Base class. `hint` tells the user what to do; `code` is stable for the wire protocol."""

    code = "frameprompt_error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message if not hint else f"{message}\n  fix: {hint}")
        self.message = message
        self.hint = hint


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
