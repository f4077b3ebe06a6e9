"""The dataset format on disk: a folder of shards, each a folder of ``.npy`` arrays.

```
DIR/manifest.json            settings and, per shard, the sha256 of its shard.json
DIR/shard-00000/images.npy   uint8 (S, V, H, W, 3), sRGB-encoded; renderer "both": the raster images
DIR/shard-00000/images_path.npy  (renderer "both" only) uint8 (S, V, H, W, 3), path-traced images
DIR/shard-00000/viewpoints.npy   float32 (S, V, 7) (x, y, z, cos yaw, sin yaw, cos pitch, sin pitch)
DIR/shard-00000/cameras.npy  float32 (S, V, 4, 4) camera-to-world matrices
DIR/shard-00000/fov.npy      float32 (S, V) vertical field of view, degrees
DIR/shard-00000/scenes.json  the S scene descriptions (TOML format as JSON), so any view re-renders
DIR/shard-00000/shard.json   index, scene range and the sha256 of every file above
```

Why folders of ``.npy``: ``np.load(mmap_mode="r")`` gives zero-copy random access to any view of any
scene, so a loader reads only the bytes it uses; the files are plain numpy, readable anywhere.
A shard is written into ``.shard-00000.tmp-*`` and renamed when complete, so a folder named
``shard-*`` is always whole; a shard whose checksums fail is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .image_io import write_text_atomic

FORMAT = "trirender-gqn"
VERSION = 1
ARRAY_FILES = ("images.npy", "viewpoints.npy", "cameras.npy", "fov.npy")


class ShardError(ValueError):
    """A shard or manifest is missing, incomplete or corrupt; the message names it."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shard(root: str | Path, index: int, first_scene: int, arrays: dict[str, np.ndarray],
                scenes: list[dict[str, Any]]) -> str:
    """Write shard ``index`` atomically; returns the sha256 of its shard.json.

    arrays: ``images`` uint8 (S, V, H, W, 3), ``viewpoints`` float32 (S, V, 7), ``cameras`` float32
    (S, V, 4, 4), ``fov`` float32 (S, V), optionally ``images_path`` uint8 (S, V, H, W, 3).
    scenes: S JSON-serialisable scene records.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / shard_name(index)
    tmp = Path(tempfile.mkdtemp(prefix=f".{shard_name(index)}.tmp-", dir=root))
    try:
        digests = {}
        for name, arr in arrays.items():
            fname = f"{name}.npy"
            np.save(tmp / fname, np.ascontiguousarray(arr))
            digests[fname] = sha256_file(tmp / fname)
        (tmp / "scenes.json").write_text(json.dumps(scenes, sort_keys=True))
        digests["scenes.json"] = sha256_file(tmp / "scenes.json")
        s = int(arrays["images"].shape[0])
        meta = {"index": index, "first_scene": first_scene, "scenes": s, "sha256": digests}
        (tmp / "shard.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        for f in tmp.iterdir():  # data on disk before the rename makes the shard visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        from .image_io import _umask

        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a shared dataset must be readable
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~_umask())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sha256_file(final / "shard.json")


def verify_shard(root: str | Path, index: int, expected: str | None = None) -> str | None:
    """Recompute a shard's checksums. Returns None if it is whole, else what is wrong (one line)."""
    d = Path(root) / shard_name(index)
    meta_path = d / "shard.json"
    if not meta_path.is_file():
        return f"{d}: missing"
    if expected is not None and sha256_file(meta_path) != expected:
        return f"{d}/shard.json: checksum differs from manifest.json"
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return f"{d}/shard.json: not valid JSON"
    for fname, digest in meta.get("sha256", {}).items():
        p = d / fname
        if not p.is_file():
            return f"{p}: missing"
        if sha256_file(p) != digest:
            return f"{p}: checksum mismatch (corrupt)"
    return None


def clean_temporaries(root: str | Path, shards: Iterable[int] | None = None) -> int:
    """Remove half-written shards left by an interrupted run (only those of ``shards`` when given:
    another process sharing the folder may be writing its own right now); returns how many."""
    mine = None if shards is None else {shard_name(j) for j in shards}
    n = 0
    for p in Path(root).glob(".shard-*.tmp-*"):
        if mine is None or p.name[1:].split(".tmp-")[0] in mine:
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        if any(Path(root).glob("manifest.part-*.json")):
            raise ShardError(f"{path}: missing; this folder holds parts of a distributed run that is not "
                             "finished (the last part to finish writes manifest.json; parts finished apart "
                             f"and copied here are joined by `trirender dataset merge {root}`)")
        raise ShardError(f"{path}: missing; expected a dataset folder made by `trirender dataset generate`")
    try:
        m = json.loads(path.read_text())
    except ValueError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise ShardError(f"{path}: format {m.get('format')!r} version {m.get('version')!r}; expected {FORMAT!r} version {VERSION}")
    return m


def write_manifest(root: str | Path, manifest: dict[str, Any], name: str = "manifest.json") -> None:
    write_text_atomic(Path(root) / name, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


@dataclass
class Shard:
    """One shard's arrays, memory-mapped read-only."""

    index: int
    first_scene: int
    images: np.ndarray  # uint8 (S, V, H, W, 3)
    viewpoints: np.ndarray  # float32 (S, V, 7)
    cameras: np.ndarray  # float32 (S, V, 4, 4)
    fov: np.ndarray  # float32 (S, V)
    images_path: np.ndarray | None = None

    @property
    def num_scenes(self) -> int:
        return int(self.images.shape[0])


def open_shard(root: str | Path, index: int, expected: str | None = None, verify: bool = True) -> Shard:
    """Memory-map one shard; with ``verify`` its checksums are recomputed first and a corrupt or
    incomplete shard raises ShardError naming it."""
    d = Path(root) / shard_name(index)
    if verify:
        problem = verify_shard(root, index, expected)
        if problem:
            raise ShardError(f"refusing corrupt shard: {problem}")
    meta = json.loads((d / "shard.json").read_text())
    load = lambda n: np.load(d / f"{n}.npy", mmap_mode="r")  # noqa: E731
    return Shard(index, int(meta["first_scene"]), load("images"), load("viewpoints"), load("cameras"), load("fov"),
                 load("images_path") if (d / "images_path.npy").exists() else None)


def read_scene_records(root: str | Path, index: int) -> list[dict[str, Any]]:
    return json.loads((Path(root) / shard_name(index) / "scenes.json").read_text())
