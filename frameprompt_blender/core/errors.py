"""The one error base class of the project, shared by the add-on and the backend (pure Python).

Every error a user can meet says what is wrong (`message`) and how to fix it (`hint`); `code` is
a stable identifier (the wire protocol sends it, the panel and scripts can test it).
"""

from __future__ import annotations


class FramePromptError(Exception):
    code = "frameprompt_error"

    def __init__(self, message: str, hint: str = "", code: str | None = None) -> None:
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code
        super().__init__(self.describe())

    def describe(self) -> str:
        """The message with its fix, as printed to users."""
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"
