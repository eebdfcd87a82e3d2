"""``python -m frameprompt_blender.batch SCENE.blend --server ADDR --out DIR``: see
:mod:`frameprompt_blender.blender.batch`. Imports bpy, so the backend never imports this module."""

from __future__ import annotations

from .blender.batch import build_parser, main, run, run_batch

__all__ = ["build_parser", "main", "run", "run_batch"]

if __name__ == "__main__":
    main()
