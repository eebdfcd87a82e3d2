"""Blender's camera projection, in numpy: 3-D world points -> render pixels + camera depth.

Pure module (numpy only). The `bpy` edge copies the camera and render settings into `CameraParams`
(`frameprompt_blender.blender.skeleton.camera_params`) and projects all keypoints of a frame in one call.

It follows Blender's `BKE_camera_params_compute_viewplane` (source/blender/blenkernel/intern/camera.cc):
perspective and orthographic cameras, sensor fit (AUTO/HORIZONTAL/VERTICAL), lens shift, render
resolution x percentage, and pixel aspect. `bpy_extras.object_utils.world_to_camera_view` gives the same
numbers (the Blender tests check this); this version is vectorised and needs no `bpy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CameraParams:
    """What the projection needs from a Blender camera object, its data and the scene's render settings."""

    matrix_world: np.ndarray  # (4, 4) camera object -> world
    type: str = "PERSP"  # "PERSP" | "ORTHO"
    lens: float = 50.0  # mm (perspective)
    ortho_scale: float = 6.0  # (orthographic)
    sensor_width: float = 36.0
    sensor_height: float = 24.0
    sensor_fit: str = "AUTO"  # "AUTO" | "HORIZONTAL" | "VERTICAL"
    shift_x: float = 0.0
    shift_y: float = 0.0
    clip_start: float = 0.1
    clip_end: float = 1000.0
    resolution_x: int = 1920
    resolution_y: int = 1080
    resolution_percentage: int = 100
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0
    _view: np.ndarray = field(default_factory=lambda: np.eye(4), init=False, repr=False)

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix_world, np.float64).reshape(4, 4).copy()
        self.matrix_world = m
        # Like `Matrix.normalized()`: drop the camera object's scale, keep rotation and location.
        rot = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0, keepdims=True)
        view = np.eye(4)
        view[:3, :3] = rot.T
        view[:3, 3] = -rot.T @ m[:3, 3]
        self._view = view
        if self.type not in ("PERSP", "ORTHO"):
            raise ValueError(
                f"camera type {self.type!r} is not supported for pose export; use a perspective or orthographic camera"
            )

    @property
    def render_size(self) -> tuple[int, int]:
        """Render size in pixels, resolution x percentage (integer, as Blender computes it)."""
        return (
            self.resolution_x * self.resolution_percentage // 100,
            self.resolution_y * self.resolution_percentage // 100,
        )

    @property
    def location(self) -> np.ndarray:
        return self.matrix_world[:3, 3].copy()

    @property
    def view_direction(self) -> np.ndarray:
        """World-space direction the camera looks along (its local -Z)."""
        d = -self.matrix_world[:3, 2]
        return d / np.linalg.norm(d)

    def viewplane(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the frame in camera space at distance 1 (perspective) or in scene
        units (orthographic). Mirrors BKE_camera_params_compute_viewplane."""
        winx, winy = self.render_size
        aspx, aspy = self.pixel_aspect_x, self.pixel_aspect_y
        fit = self.sensor_fit
        if fit == "AUTO":
            fit = "HORIZONTAL" if aspx * winx >= aspy * winy else "VERTICAL"
        ycor = aspy / aspx
        viewfac = winx if fit == "HORIZONTAL" else ycor * winy
        if self.type == "ORTHO":
            pixsize = self.ortho_scale
        else:
            # BKE_camera_sensor_size: the sensor fit setting (not the resolved AUTO) picks the dimension.
            sensor = self.sensor_height if self.sensor_fit == "VERTICAL" else self.sensor_width
            pixsize = sensor / self.lens
        pixsize /= viewfac
        dx = self.shift_x * viewfac
        dy = self.shift_y * viewfac
        xmin = (-0.5 * winx + dx) * pixsize
        xmax = (0.5 * winx + dx) * pixsize
        ymin = (-0.5 * ycor * winy + dy) * pixsize
        ymax = (0.5 * ycor * winy + dy) * pixsize
        return xmin, xmax, ymin, ymax

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) camera-space points (camera looks along -Z)."""
        p = np.asarray(points, np.float64).reshape(-1, 3)
        return p @ self._view[:3, :3].T + self._view[:3, 3]

    def camera_view(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) like `world_to_camera_view`: x, y in 0..1 from the bottom-left of the frame, z = depth
        (distance in front of the camera along its axis; negative behind)."""
        pc = self.to_camera(points)
        depth = -pc[:, 2]
        if self.type == "ORTHO":
            u, v = pc[:, 0], pc[:, 1]
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                safe = np.where(np.abs(depth) < 1e-12, 1e-12, depth)
                u, v = pc[:, 0] / safe, pc[:, 1] / safe
        xmin, xmax, ymin, ymax = self.viewplane()
        return np.column_stack([(u - xmin) / (xmax - xmin), (v - ymin) / (ymax - ymin), depth])


@dataclass
class Projected:
    pixels: np.ndarray  # (N, 2) x, y, origin top-left
    depth: np.ndarray  # (N,) distance along the view axis (bigger = farther)
    in_front: np.ndarray  # (N,) bool: between clip_start and clip_end
    in_frame: np.ndarray  # (N,) bool: inside the canvas

    @property
    def visible(self) -> np.ndarray:
        return self.in_front & self.in_frame


def project_points(
    cam: CameraParams, points: np.ndarray, width: int | None = None, height: int | None = None
) -> Projected:
    """Project world points into a width x height canvas (default: the render size).

    The frame is the render frame; a canvas of another size is the render frame stretched to it, so
    keep its aspect equal to the render's.
    """
    w, h = cam.render_size if width is None or height is None else (int(width), int(height))
    ndc = cam.camera_view(points)
    px = ndc[:, 0] * w
    py = (1.0 - ndc[:, 1]) * h
    depth = ndc[:, 2]
    in_front = (depth > cam.clip_start) & (depth < cam.clip_end)
    in_frame = (px >= 0) & (px <= w) & (py >= 0) & (py <= h) & np.isfinite(px) & np.isfinite(py)
    return Projected(np.column_stack([px, py]), depth, in_front, in_frame)
