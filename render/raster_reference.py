"""The simple reference the rasterizer is tested against (STYLE rule 9): one ray per pixel centre,
intersected with every triangle in numpy. Slow (H*W*T work) and obviously right.
"""

from __future__ import annotations

import numpy as np

from .camera import Camera
from .scene import Scene


def reference_visibility(scene: Scene, camera: Camera | None = None, chunk: int = 4096
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit per pixel centre by brute force (Moller-Trumbore against all triangles).

    Honours the rasterizer's rules: back faces of one-sided materials are invisible, hits closer
    than the near plane (along the forward axis) or beyond the far plane are ignored.
    Returns object_id (H, W) int32 (-1 none), depth (H, W) float64 along the forward axis (inf none)
    and triangle (H, W) int64 (-1 none).
    """
    camera = camera or scene.camera
    origin, dirs = camera.pixel_rays()                       # (3,), (H, W, 3)
    h, w = dirs.shape[:2]
    d = dirs.reshape(-1, 3)                                  # (P, 3)
    _, _, fwd = camera.basis()
    p = scene.positions.astype(np.float64)                   # (T, 3, 3)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]            # (T, 3)
    two = np.array([m.two_sided for m in scene.materials], bool)[scene.material_id]
    ng = np.cross(e1, e2)                                    # (T, 3) front-face normals
    s = origin - p[:, 0]                                     # (T, 3)
    q = np.cross(s, e1)                                      # (T, 3)
    best_t = np.full(d.shape[0], np.inf)
    best_k = np.full(d.shape[0], -1, np.int64)
    cos_f = d @ fwd                                          # (P,) converts ray distance to depth
    for a in range(0, d.shape[0], chunk):
        dd = d[a:a + chunk]                                  # (C, 3)
        pv = np.cross(dd[:, None, :], e2[None])              # (C, T, 3)
        det = np.einsum("ctk,tk->ct", pv, e1)                # (C, T)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            u = np.einsum("ctk,tk->ct", pv, s) * inv
            v = (dd @ q.T) * inv
            t = (q * e2).sum(1)[None] * inv                  # (C, T) ray distance
        ok = (det != 0) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        # A ray hits the front face when it travels against the geometric normal.
        front = (dd @ ng.T) < 0
        ok &= front | two[None]
        depth = t * cos_f[a:a + chunk, None]
        ok &= (depth >= camera.near) & (depth <= camera.far)
        t = np.where(ok, t, np.inf)
        k = np.argmin(t, axis=1)
        best_t[a:a + chunk] = t[np.arange(len(k)), k]
        best_k[a:a + chunk] = np.where(np.isfinite(best_t[a:a + chunk]), k, -1)
    depth = np.where(best_k >= 0, best_t * cos_f, np.inf).reshape(h, w)
    tri = best_k.reshape(h, w)
    oid = np.where(tri >= 0, scene.object_id[np.maximum(tri, 0)], -1).astype(np.int32)
    return oid, depth, tri
