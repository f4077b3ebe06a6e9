"""Tiny GQN datasets for the neural tests, rendered with the rasterizer into the shard format.

Written directly with ``render.shards`` so the neural tests do not depend on the dataset CLI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from render import FAMILIES, rasterize_batch
from render.image_io import to_srgb8
from render.shards import write_manifest, write_shard


def rooms_dataset(root: str | Path, scenes: int, views: int = 8, seed: int = 0, shard_size: int = 16,
                  first_seed: int = 0) -> Path:
    """``scenes`` rooms_ring scenes (seeds first_seed..), ``views`` ring views each, 64x64, raster."""
    root = Path(root)
    fam = FAMILIES["rooms_ring"]
    shards = {}
    for si, start in enumerate(range(0, scenes, shard_size)):
        n = min(shard_size, scenes - start)
        pairs, descs, vps, c2w, fov = [], [], [], [], []
        for k in range(start, start + n):
            rng = np.random.default_rng([seed, first_seed + k])
            desc = fam.describe(rng, width=64, height=64)
            from render import scene_from_dict

            scene = scene_from_dict(desc)
            cams = fam.cameras(rng, views, 64, 64)
            pairs += [(scene, c) for c in cams]
            descs.append(desc)
            vps.append([c.viewpoint() for c in cams])
            c2w.append([c.camera_to_world() for c in cams])
            fov.append([c.fov for c in cams])
        frames = rasterize_batch(pairs)
        imgs = np.stack([to_srgb8(f.rgb) for f in frames]).reshape(n, views, 64, 64, 3)
        arrays = {"images": imgs, "viewpoints": np.asarray(vps, np.float32),
                  "cameras": np.asarray(c2w, np.float32), "fov": np.asarray(fov, np.float32)}
        shards[str(si)] = write_shard(root, si, start, arrays, descs)
    write_manifest(root, {"format": "trirender-gqn", "version": 1, "scenes": scenes, "views": views,
                          "image_size": 64, "shard_size": shard_size, "shards": shards, "family": "rooms_ring",
                          "renderer": "raster"})
    return root
