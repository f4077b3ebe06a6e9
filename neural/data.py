"""GQN batches from a dataset folder (``render.shards`` format), memory-mapped, deterministic.

A batch is B scenes, each with K context views and one query view drawn from its V stored views,
K drawn once per batch uniformly from 1..K_max as GQN does. Batch ``b`` of epoch ``e`` depends only
on (seed, e, b), never on the number of worker processes, so training resumes bit-identically from
any batch.

    loader = make_loader("data/rooms", batch_size=36, max_context=5, seed=0, num_workers=2)
    for batch in loader:                      # uint8 images, as stored
        x = to_model(batch, device)           # float images in [0, 1], channels first
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from render.shards import ShardError, open_shard, read_manifest


class SceneViews:
    """Random access to every view of every scene of a dataset folder.

    Shards are verified (checksums) when the object is made, in the process that makes it; worker
    processes re-open them memory-mapped without re-verifying. A corrupt shard raises ShardError
    naming it.
    """

    def __init__(self, root: str | Path, verify: bool = True, images: str = "images"):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if images not in ("images", "images_path"):
            raise ValueError(f"images {images!r}; expected 'images' or 'images_path'")
        if images == "images_path" and self.manifest.get("renderer") != "both":
            raise ShardError(f"{self.root}: no path-traced second image set (renderer {self.manifest.get('renderer')!r}); "
                             "images_path needs a dataset made with `trirender dataset generate --renderer both`")
        self.images_key = images
        self.shard_size = int(self.manifest["shard_size"])
        self.num_scenes = int(self.manifest["scenes"])
        self.views = int(self.manifest["views"])
        self.image_size = int(self.manifest["image_size"])
        shards = self.manifest.get("shards", {})
        expected = -(-self.num_scenes // self.shard_size)
        missing = [i for i in range(expected) if f"{i}" not in shards]
        if missing:
            raise ShardError(f"{self.root}/manifest.json: shards {missing[:5]} missing; run `trirender dataset "
                             "generate` again to finish, or `trirender dataset merge` after distributed runs")
        self._digests = {int(k): v for k, v in shards.items()}
        self._shards: dict[int, Any] | None = None
        if verify:
            self._open(verify=True)

    @classmethod
    def of_kind(cls, root: str | Path, kind: str | None, verify: bool = True) -> "SceneViews":
        """A dataset's ``kind`` of images: ``raster``, ``path`` (path-traced) or None (its own
        ``images``), as images_key picks them; ShardError names the folder when it holds no such images.
        verify=False defers the checksums to verify()."""
        views = cls(root, verify=False)
        views.images_key = images_key(views.manifest, kind, root)
        return views.verify() if verify else views

    def verify(self) -> "SceneViews":
        """Check every shard's checksum (ShardError names a corrupt one); returns self."""
        self._shards = None
        self._open(verify=True)
        return self

    def _open(self, verify: bool = False):
        if self._shards is None:
            self._shards = {i: open_shard(self.root, i, d, verify=verify) for i, d in sorted(self._digests.items())}
        return self._shards

    def __getstate__(self):  # memory maps are re-opened in each worker, not pickled
        state = dict(self.__dict__)
        state["_shards"] = None
        return state

    def gather(self, scenes: np.ndarray, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (B, N, H, W, 3) and viewpoints float32 (B, N, 7) of ``views`` (B, N) of
        ``scenes`` (B,) (global scene indices)."""
        shards = self._open()
        b, n = views.shape
        s = self.image_size
        imgs = np.empty((b, n, s, s, 3), np.uint8)
        vps = np.empty((b, n, 7), np.float32)
        which = np.asarray(scenes) // self.shard_size
        for j in np.unique(which):  # one fancy-indexed read per shard in the batch
            rows = np.nonzero(which == j)[0]
            shard = shards[int(j)]
            local = (np.asarray(scenes)[rows] - shard.first_scene)[:, None]  # (R, 1)
            src = shard.images if self.images_key == "images" else shard.images_path
            imgs[rows] = src[local, views[rows]]  # (R, N, H, W, 3)
            vps[rows] = shard.viewpoints[local, views[rows]]  # (R, N, 7)
        return imgs, vps


IMAGE_KINDS = ("raster", "path")


def images_key(manifest: dict[str, Any], kind: str | None, root: str | Path) -> str:
    """The shard array (``images`` or ``images_path``) holding a dataset's ``kind`` of images:
    ``raster`` or ``path`` (path-traced); None: the dataset's own ``images``. ShardError names the
    dataset when it holds no such images."""
    renderer = manifest.get("renderer", "raster")
    if kind is None:
        return "images"
    if kind not in IMAGE_KINDS:
        raise ValueError(f"--images {kind!r}; expected raster or path")
    if renderer == "both":
        return "images" if kind == "raster" else "images_path"
    if renderer != kind:
        other = "rasterized" if renderer == "raster" else "path-traced"
        raise ShardError(f"{root}: holds {other} images only (renderer {renderer!r}); --images {kind} needs a "
                         f"dataset made with `trirender dataset generate --renderer {kind}` or `--renderer both`")
    return "images"


def images_kind(manifest: dict[str, Any], key: str) -> str:
    """``raster`` or ``path``: what the shard array ``key`` of a dataset holds."""
    renderer = manifest.get("renderer", "raster")
    if key == "images_path":
        return "path"
    return "path" if renderer == "path" else "raster"


IDENTITY_FIELDS = ("family", "family_params", "seed", "scenes", "views", "image_size", "renderer")


def dataset_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What makes a dataset this dataset, wherever its folder lies: its generation settings and a
    sha256 over its shards' checksums (sorted by shard), so two folders with equal identities hold
    the same images."""
    shards = manifest.get("shards", {})
    h = hashlib.sha256()
    for k in sorted(shards, key=int):
        h.update(f"{int(k)}:{shards[k]}\n".encode())
    ident = {k: manifest.get(k) for k in IDENTITY_FIELDS}
    ident["family_params"] = ident["family_params"] or {}
    return {**ident, "shards_sha256": h.hexdigest()}


def identity_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two dataset identities, one ``field a vs b`` item each."""
    out = [f"{k} {json.dumps(a.get(k))} vs {json.dumps(b.get(k))}" for k in IDENTITY_FIELDS if a.get(k) != b.get(k)]
    if not out and a.get("shards_sha256") != b.get("shards_sha256"):
        out.append("the same settings but other images (shard checksums differ: regenerated with another render "
                   "revision, or edited)")
    return out


def same_scenes(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    """Whether two datasets share scenes: a scene depends only on (family, family params, seed,
    scene index), so two datasets of one family, parameters and seed share their first scenes
    (whatever their views, size or renderer). None when either identity is unknown."""
    if not a or not b:
        return None
    return (a.get("family"), a.get("family_params") or {}, a.get("seed")) == \
        (b.get("family"), b.get("family_params") or {}, b.get("seed"))


class GQNBatches(Dataset):
    """Map-style dataset whose items are whole batches: item ``b`` is batch ``b`` of the current
    epoch (see ``set_epoch``). Use with ``DataLoader(batch_size=None)``.

    Each item is a dict of tensors: ``context_images`` uint8 (B, K, H, W, 3), ``context_viewpoints``
    float32 (B, K, 7), ``query_image`` uint8 (B, H, W, 3), ``query_viewpoint`` float32 (B, 7),
    ``scene_index`` int64 (B,).
    """

    def __init__(self, views: SceneViews, batch_size: int, max_context: int = 5, seed: int = 0,
                 fixed_context: int | None = None, drop_last: bool = True):
        if views.views < 2:
            raise ValueError(f"{views.root}: {views.views} view(s) per scene; expected at least 2 (context + query)")
        self.data = views
        self.batch_size = int(batch_size)
        self.max_context = int(min(max_context, views.views - 1))
        self.fixed_context = fixed_context
        if fixed_context is not None and not 1 <= fixed_context <= views.views - 1:
            raise ValueError(f"context {fixed_context}; expected 1..{views.views - 1} for {views.views} views per scene")
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.data.num_scenes
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def spec(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene indices (B,) and view indices (B, K + 1) (context first, query last) of batch ``index``."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.data.num_scenes)
        scenes = order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = self.fixed_context or int(rng.integers(1, self.max_context + 1))
        # K + 1 distinct views per scene: the first K of a random permutation per row
        views = np.argsort(rng.random((len(scenes), self.data.views)), axis=1)[:, : k + 1]
        return scenes, views

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        scenes, views = self.spec(index)
        imgs, vps = self.data.gather(scenes, views)
        return {
            "context_images": torch.from_numpy(imgs[:, :-1]),
            "context_viewpoints": torch.from_numpy(vps[:, :-1]),
            "query_image": torch.from_numpy(np.ascontiguousarray(imgs[:, -1])),
            "query_viewpoint": torch.from_numpy(np.ascontiguousarray(vps[:, -1])),
            "scene_index": torch.from_numpy(scenes.astype(np.int64)),
        }


def make_loader(root: str | Path, batch_size: int, max_context: int = 5, seed: int = 0, num_workers: int = 0,
                epoch: int = 0, start_batch: int = 0, fixed_context: int | None = None, verify: bool = True,
                images: str = "images") -> DataLoader:
    """A DataLoader over batches ``start_batch..`` of ``epoch`` (for resuming mid-epoch)."""
    ds = GQNBatches(SceneViews(root, verify=verify, images=images), batch_size, max_context, seed, fixed_context)
    ds.set_epoch(epoch)
    return DataLoader(ds, batch_size=None, sampler=range(start_batch, len(ds)), num_workers=num_workers,
                      persistent_workers=False, pin_memory=False)


def to_model(batch: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """uint8 channel-last images -> float32 channel-first in [0, 1] on ``device``:
    context_images (B, K, 3, H, W), query_image (B, 3, H, W); viewpoints moved as they are."""
    ctx = batch["context_images"].to(device, non_blocking=True)
    qry = batch["query_image"].to(device, non_blocking=True)
    return {
        "context_images": ctx.permute(0, 1, 4, 2, 3).float().div_(255.0),  # (B, K, 3, H, W)
        "context_viewpoints": batch["context_viewpoints"].to(device),  # (B, K, 7)
        "query_image": qry.permute(0, 3, 1, 2).float().div_(255.0),  # (B, 3, H, W)
        "query_viewpoint": batch["query_viewpoint"].to(device),  # (B, 7)
    }
