"""Tiny GQN datasets for the neural tests: rooms_ring scenes rendered by the dataset generator
(rasterizer by default, 64x64). Each dataset is rendered once per test process into a temporary
folder (removed at exit) and shared by test_train.py and test_eval.py."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_CACHE: dict[tuple, Path] = {}
_ROOT: list[Path] = []


def rooms_dataset(scenes: int, views: int = 6, seed: int = 0, renderer: str = "raster", spp: int = 8) -> Path:
    """A folder of ``scenes`` rooms_ring scenes x ``views`` views, 64x64, rasterized (or path-traced at
    ``spp`` on Taichi's auto backend). Do not modify it."""
    key = (scenes, views, seed, renderer, spp)
    if key not in _CACHE:
        from render.dataset import DatasetConfig, generate

        if not _ROOT:
            _ROOT.append(Path(tempfile.mkdtemp(prefix="trirender-neural-tests-")))
            atexit.register(shutil.rmtree, _ROOT[0], True)
        out = _ROOT[0] / f"rooms-{scenes}x{views}-seed{seed}-{renderer}{spp}"
        generate(DatasetConfig("rooms_ring", scenes, views, size=64, renderer=renderer, spp=spp, seed=seed,
                               shard_size=50), out, progress=False)
        _CACHE[key] = out
    return _CACHE[key]


def with_path_images(src: Path, out: Path) -> Path:
    """A copy of the dataset ``src`` as a ``--renderer both`` dataset would be (``images`` and
    ``images_path``), whose path-traced images are stand-ins: 255 minus the rasterized ones, so
    which set was read is plain. Valid checksums; cheap (no path tracing)."""
    import numpy as np

    from render.shards import open_shard, read_manifest, read_scene_records, write_manifest, write_shard

    manifest = read_manifest(src)
    manifest["renderer"] = manifest["config"]["renderer"] = "both"
    for k in manifest["shards"]:
        sh = open_shard(src, int(k), verify=False)
        arrays = {"images": np.asarray(sh.images), "viewpoints": np.asarray(sh.viewpoints),
                  "cameras": np.asarray(sh.cameras), "fov": np.asarray(sh.fov),
                  "images_path": 255 - np.asarray(sh.images)}
        manifest["shards"][k] = write_shard(out, int(k), sh.first_scene, arrays, read_scene_records(src, int(k)))
    write_manifest(out, manifest)
    return out
