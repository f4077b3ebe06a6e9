"""Pinhole camera: look-at frame, primary rays, OpenGL view/projection matrices, GQN viewpoint.

Conventions (DESIGN.md): right-handed, y up, metres. The camera looks down its own -z axis, +x is
image right, +y is image up. Image row 0 is the top row; pixel (i, j) = (row, column) covers
``[j, j+1) x [i, i+1)`` in continuous raster coordinates, so its centre is ``(j + 0.5, i + 0.5)``.
``fov`` is the *vertical* field of view in degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """A perspective camera.

    position, look_at, up: world-space 3-vectors (metres); ``up`` need not be orthogonal to the
        view direction but must not be parallel to it.
    fov: vertical field of view in degrees, in (0, 180).
    width, height: image size in pixels.
    near, far: clip distances along the forward axis (metres), used by the rasterizer's projection.
    """

    position: tuple[float, float, float]
    look_at: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    fov: float = 45.0
    width: int = 256
    height: int = 256
    near: float = 0.01
    far: float = 1000.0

    def __post_init__(self):
        for name in ("position", "look_at", "up"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """Why this camera cannot be used, or None. (Loaders turn this into a SceneError.)"""
        vals = self.position + self.look_at + self.up + (self.fov, self.near, self.far)
        if not all(math.isfinite(v) for v in vals):
            return "camera numbers must be finite"
        f = [b - a for a, b in zip(self.position, self.look_at)]
        nf, nu = math.hypot(*f), math.hypot(*self.up)
        if nf < 1e-9:
            return "look_at equals position; expected a point away from the camera"
        if nu < 1e-9:
            return "up is the zero vector; expected a direction such as [0, 1, 0]"
        (fx, fy, fz), (ux, uy, uz) = f, self.up
        sine = math.hypot(fy * uz - fz * uy, fz * ux - fx * uz, fx * uy - fy * ux) / (nf * nu)
        if sine < 1e-6:
            return "the camera looks along its up vector; expected up not parallel to look_at - position"
        if not 0.0 < self.fov < 180.0:
            return f"fov {self.fov} out of range; expected degrees in (0, 180)"
        if self.width < 1 or self.height < 1:
            return f"image size {self.width}x{self.height}; expected width and height >= 1"
        if not 0.0 < self.near < self.far:
            return f"near {self.near}, far {self.far}; expected 0 < near < far"
        return None

    # --- frame ----------------------------------------------------------------------------------
    @property
    def aspect(self) -> float:
        return self.width / self.height

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(right, true_up, forward) unit vectors in world space, float64 (3,) each (copies)."""
        return tuple(np.array(v) for v in self._basis_floats())

    def _basis_floats(self) -> tuple[tuple[float, float, float], ...]:
        """``basis`` as tuples of floats, computed once per camera: datasets ask for it thousands
        of times, and making arrays costs more than the numbers."""
        cached = self.__dict__.get("_basis")
        if cached is None:  # computed once per camera: datasets ask for it thousands of times
            fx, fy, fz = (b - a for a, b in zip(self.position, self.look_at))
            n = math.sqrt(fx * fx + fy * fy + fz * fz)
            fx, fy, fz = fx / n, fy / n, fz / n
            ux, uy, uz = self.up
            rx, ry, rz = fy * uz - fz * uy, fz * ux - fx * uz, fx * uy - fy * ux
            n = math.sqrt(rx * rx + ry * ry + rz * rz)
            rx, ry, rz = rx / n, ry / n, rz / n
            cached = ((rx, ry, rz), (ry * fz - rz * fy, rz * fx - rx * fz, rx * fy - ry * fx), (fx, fy, fz))
            object.__setattr__(self, "_basis", cached)
        return cached

    def camera_to_world(self) -> np.ndarray:
        """(4, 4) float64: columns are right, up, -forward (the camera's +z) and position."""
        (rx, ry, rz), (ux, uy, uz), (fx, fy, fz) = self._basis_floats()
        px, py, pz = self.position
        return np.array([[rx, ux, -fx, px], [ry, uy, -fy, py], [rz, uz, -fz, pz], [0.0, 0.0, 0.0, 1.0]])

    def view_matrix(self) -> np.ndarray:
        """(4, 4) float64 world-to-camera matrix (OpenGL ``lookAt``): the inverse of
        ``camera_to_world``, written out (rows right, up, -forward; translation -R^T p)."""
        (rx, ry, rz), (ux, uy, uz), (fx, fy, fz) = self._basis_floats()
        m = np.array([[rx, ry, rz, 0.0], [ux, uy, uz, 0.0], [-fx, -fy, -fz, 0.0], [0.0, 0.0, 0.0, 1.0]])
        m[:3, 3] = -(m[:3, :3] @ np.asarray(self.position, np.float64))
        return m

    def projection_matrix(self) -> np.ndarray:
        """(4, 4) float64 OpenGL perspective matrix (clip z in [-w, w] between near and far)."""
        t = 1.0 / math.tan(math.radians(self.fov) / 2.0)
        n, fa = self.near, self.far
        p = np.zeros((4, 4))
        p[0, 0] = t / self.aspect
        p[1, 1] = t
        p[2, 2] = -(fa + n) / (fa - n)
        p[2, 3] = -2.0 * fa * n / (fa - n)
        p[3, 2] = -1.0
        return p

    # --- rays and projection -------------------------------------------------------------------
    def ray_directions(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Unit world-space directions through raster points.

        px, py: float arrays of the same shape, continuous raster coordinates (x right in [0, W],
        y down in [0, H]); pixel centres are at +0.5. Returns shape ``px.shape + (3,)``, float64.
        """
        r, u, f = self.basis()
        tan_half = math.tan(math.radians(self.fov) / 2.0)
        sx = (2.0 * np.asarray(px, np.float64) / self.width - 1.0) * tan_half * self.aspect
        sy = (1.0 - 2.0 * np.asarray(py, np.float64) / self.height) * tan_half
        d = sx[..., None] * r + sy[..., None] * u + f
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def pixel_rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Origins (3,) and directions (H, W, 3) of the rays through every pixel centre."""
        jj, ii = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        return np.asarray(self.position, np.float64), self.ray_directions(jj, ii)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) to raster coordinates (..., 2) (x right, y down) and depth (...)
        along the forward axis (positive in front of the camera)."""
        p = np.asarray(points, np.float64)
        r, u, f = self.basis()
        d = p - np.asarray(self.position)
        x, y, z = d @ r, d @ u, d @ f
        tan_half = math.tan(math.radians(self.fov) / 2.0)
        sx = x / (z * tan_half * self.aspect)
        sy = y / (z * tan_half)
        raster = np.stack([(sx + 1.0) * 0.5 * self.width, (1.0 - sy) * 0.5 * self.height], axis=-1)
        return raster, z

    def viewpoint(self) -> np.ndarray:
        """The GQN viewpoint: (x, y, z, cos yaw, sin yaw, cos pitch, sin pitch), float32 (7,).

        yaw = atan2(f_x, f_z) is the heading of the forward direction f about the world y axis
        (0 when looking along +z, +90 degrees when looking along +x); pitch = asin(f_y) is its
        elevation (positive when looking up).
        """
        f = self._basis_floats()[2]
        yaw = math.atan2(f[0], f[2])
        pitch = math.asin(max(-1.0, min(1.0, f[1])))
        return np.array([*self.position, math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)],
                        np.float32)

    def with_size(self, width: int, height: int) -> "Camera":
        """The same camera with another image size (the vertical fov is kept)."""
        return Camera(self.position, self.look_at, self.up, self.fov, int(width), int(height), self.near, self.far)
