"""FramePrompt: in-context controllable animation on Wan2.1, with zero structural changes."""

__version__ = "0.1.0"
