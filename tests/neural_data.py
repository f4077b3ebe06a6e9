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
