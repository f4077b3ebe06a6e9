"""Small scene builders shared by the tests (no files outside tmp_path are read or written)."""

from __future__ import annotations

import copy
import signal

import numpy as np
import trimesh

ARRAYS = ("positions", "normals", "uvs", "material_id", "object_id")


def minimal_description(mesh_file: str | None = None) -> dict:
    """DESIGN.md's minimal scene as a dict; with ``mesh_file`` its mesh object is included."""
    d = {
        "camera": {"position": [0.0, 1.0, 3.4], "look_at": [0.0, 1.0, 0.0], "up": [0.0, 1.0, 0.0],
                   "fov": 39.3, "width": 64, "height": 48},
        "materials": {
            "white": {"type": "diffuse", "albedo": [0.73, 0.73, 0.73]},
            "lamp": {"type": "emitter", "radiance": [17.0, 12.0, 4.0], "albedo": [0.0, 0.0, 0.0]},
        },
        "objects": [
            {"shape": "sphere", "material": "white", "radius": 0.5, "translate": [0.0, 0.5, 0.0]},
            {"shape": "quad", "material": "lamp", "size": [0.5, 0.5], "translate": [0.0, 1.9, 0.0], "rotate": [90.0, 0.0, 0.0]},
        ],
        "lights": [{"type": "point", "position": [0.0, 1.9, 0.0], "intensity": [5.0, 5.0, 5.0]}],
        "environment": {"radiance": [0.0, 0.0, 0.0]},
    }
    if mesh_file:
        d["objects"].append({"shape": "mesh", "file": mesh_file, "material": "white", "translate": [0.0, 0.0, 0.0],
                             "rotate": [0.0, 30.0, 0.0], "scale": 1.0})
    return copy.deepcopy(d)


def write_ply_without_normals(path, mesh: trimesh.Trimesh) -> None:
    """A binary PLY with positions and faces only."""
    vs = np.asarray(mesh.vertices, "<f4")
    fs = np.asarray(mesh.faces, "<i4")
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vs)}\nproperty float x\nproperty float y\n"
              f"property float z\nelement face {len(fs)}\nproperty list uchar int vertex_indices\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(vs.tobytes())
        for t in fs:
            f.write(np.uint8(3).tobytes() + t.tobytes())


def sigint_as_from_a_terminal() -> None:
    """preexec_fn of a child process that a test interrupts with SIGINT: SIGINT's default
    disposition, as a command typed at a terminal has. A shell starts background jobs (`pytest &`
    in a script) with SIGINT ignored and children inherit that, so the child would never see the
    signal and the test would fail for how pytest was started rather than for the code."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sigint_blocked() -> bool:
    """Whether this process has SIGINT blocked (Linux: its /proc status); run in a pool's worker."""
    with open("/proc/self/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    return bool(mask >> (signal.SIGINT - 1) & 1)


def same_arrays(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ARRAYS)


def triangle_soup_scene(positions: np.ndarray):
    """A scene of the triangles ``positions`` (T, 3, 3), one diffuse material, normals +z: for
    traversal tests, which look only at the geometry."""
    import dataclasses

    import render

    scene = render.scene_from_dict({"camera": {"position": [0, 0, 5], "look_at": [0, 0, 0], "width": 8, "height": 8},
                                    "materials": {"m": {"type": "diffuse"}},
                                    "objects": [{"shape": "quad", "material": "m"}]})
    n = len(positions)
    return dataclasses.replace(scene, positions=positions, normals=np.zeros_like(positions) + [0, 0, 1],
                               uvs=np.zeros((n, 3, 2), np.float32), material_id=np.zeros(n, np.int32),
                               object_id=np.zeros(n, np.int32))


def random_triangles_and_rays(seed: int, n_tris: int, n_rays: int):
    """(scene, positions, origins, unit directions): triangles scattered over [-2, 2]^3 and rays
    from [-3, 3]^3 in uniformly random directions."""
    rng = np.random.default_rng(seed)
    positions = (rng.uniform(-2, 2, (n_tris, 1, 3)) + rng.normal(0, 0.3, (n_tris, 3, 3))).astype(np.float32)
    o = rng.uniform(-3, 3, (n_rays, 3))
    d = rng.normal(size=(n_rays, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return triangle_soup_scene(positions), positions, o, d
