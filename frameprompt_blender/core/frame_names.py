"""Frame file names, one convention everywhere: `0000.png, 0001.png ...` for images and
`0000_keypoints.json ...` for OpenPose poses (the names OpenPose itself writes). Sorting the names
sorts the frames."""

from __future__ import annotations

POSE_SUFFIX = "_keypoints.json"


def frame_name(index: int, suffix: str = ".png") -> str:
    """`0007.png` for index 7 (suffix includes the dot)."""
    return f"{index:04d}{suffix}"


def pose_file_name(index: int) -> str:
    """`0007_keypoints.json` for index 7."""
    return frame_name(index, POSE_SUFFIX)
