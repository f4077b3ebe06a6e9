"""Dataset generation for the neural renderer: procedural scenes rendered from V viewpoints each,
written as checksummed shards (``render.shards``), resumable and splittable across processes.

Determinism: scene ``k`` is built with ``default_rng([seed, k])`` and its cameras with
``default_rng([seed, k, 1])``; the path tracer's seed for view ``v`` of scene ``k`` is
``seed * 1_000_003 + k * V + v``. So a shard depends only on (settings, seed, shard index): any
number of processes or machines, any order, any interruption, gives byte-identical shards.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import RenderError
from .families import FAMILIES
from .image_io import to_srgb8
from .loader import scene_from_dict
from .pathtracer import MAX_SPP
from .schema import MAX_IMAGE_SIDE
from .shards import (FORMAT, VERSION, ShardError, clean_temporaries, read_manifest, shard_name, sha256_file,
                     verify_shard, write_manifest, write_shard)

RENDERERS = ("raster", "path", "both")
# Bumped whenever a change to a renderer or the scene builder alters rendered bytes, so that a
# half-made dataset is not resumed with shards that would differ from its first ones. 2: the
# rasterizer's depth test before the division, the written-out view matrix, R S folded into one
# matrix product when placing shapes (rounding-level changes). 3: the path tracer's environment-map
# sampling and its views of a scene traced in one launch (the recompiled kernel rounds some
# path-traced pixels of every scene differently, by ~1e-7). 4: the path tracer's BVH leaves of up
# to 8 triangles tested in SIMD (another tree, and barycentrics rounded differently). 5: the path
# tracer's back faces of one-sided materials (emitters by default) black instead of reflecting.
# 6: the path tracer on a GPU tests its BVH leaves one triangle at a time again (another tree there;
# GPU images round differently, CPU images are unchanged bit for bit). 7: the path tracer's shadow
# rays aimed from their offset origin (lights no longer hide themselves from points near their plane
# or far from the origin), NEE on black metals, normals against the winding shaded; environment maps
# oriented as Mitsuba's envmap in both renderers (no family uses one). 8: glass's Fresnel term
# from |cos| where wo dips below an interpolated normal (it reflected everything there); the
# emitter pick's pdf is the probability the kernel's search really gives (changes images by ~1e-7);
# camera rays clipped to the camera's near and far planes (start on the near plane); conservative
# slab tests and a 1e-5 barycentric slack, so rays through creases and seams no longer leak; CPU
# leaves of up to three SIMD blocks (another tree). 9: the CPU's packet kernel (its own float
# rounding, then its own tree), and quiet CPU renders in big passes (a dataset's views in one pass
# instead of 1, 1, 2, 4, 8, 16, ...: another summation order); the images differ by rounding.
# 10: the packet kernel's triangle test rewritten around the triangle's normal (other rounding).
# 11: the packet kernel's triangle test with fused multiply-adds (on x86-64 Linux; it should have
# bumped this itself), and its closest-hit leaf step as vector code in the variant that rooms_ring
# uses (~0.2 % of rooms_ring's path-traced pixels round differently, by ~1e-7).
RENDER_REVISION = 11
# The same for the rasterizer alone: the last revision above that changed rasterized bytes (7's
# environment-map orientation; 3-6 and 8 changed the path tracer only). A raster-only dataset
# records this one, so a path-tracer change does not stop a half-made raster dataset from resuming.
RASTER_REVISION = 7


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that determines a dataset's bytes (saved in manifest.json)."""

    family: str  # a name in render.FAMILIES
    scenes: int  # number of scenes N
    views: int  # views per scene V
    size: int = 64  # image width = height, pixels
    renderer: str = "raster"  # raster | path | both (both stores images and images_path)
    spp: int = 64  # path tracer samples per pixel
    max_depth: int = 8  # path tracer path segments
    ssaa: int = 1  # rasterizer supersampling per axis
    seed: int = 0
    shard_size: int = 100  # scenes per shard
    family_params: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the family

    def check(self) -> None:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r}; expected one of: {', '.join(FAMILIES)}")
        if self.renderer not in RENDERERS:
            problems.append(f"renderer {self.renderer!r}; expected one of: {', '.join(RENDERERS)}")
        for name, lo in (("scenes", 1), ("views", 1), ("size", 8), ("spp", 1), ("shard_size", 1)):
            if getattr(self, name) < lo:
                problems.append(f"{name} {getattr(self, name)}; expected at least {lo}")
        for name, hi in (("size", MAX_IMAGE_SIDE), ("spp", MAX_SPP)):
            if getattr(self, name) > hi:
                problems.append(f"{name} {getattr(self, name)}; expected at most {hi}")
        if self.ssaa not in (1, 2, 4):
            problems.append(f"ssaa {self.ssaa}; expected 1, 2 or 4")
        if self.max_depth < -1:
            problems.append(f"max_depth {self.max_depth}; expected -1 (unbounded) or an integer >= 0")
        if problems:
            raise RenderError("dataset settings: " + "; ".join(problems))

    @property
    def num_shards(self) -> int:
        return -(-self.scenes // self.shard_size)

    def manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "family": self.family, "family_params": self.family_params,
                "scenes": self.scenes, "views": self.views, "image_size": self.size, "renderer": self.renderer,
                "render_settings": {"spp": self.spp, "max_depth": self.max_depth, "ssaa": self.ssaa,
                                    "shadow_map": shadow_map_size(self.size),
                                    "directional_shadow_map": shadow_map_size(self.size),
                                    "render_revision": RASTER_REVISION if self.renderer == "raster" else
                                    RENDER_REVISION},
                "seed": self.seed, "shard_size": self.shard_size, "num_shards": self.num_shards,
                "config": asdict(self)}


def shadow_map_size(image_size: int) -> int:
    """Side of the shadow maps for dataset views, cube faces and directional maps alike: 4 texels per
    image pixel (at least 128). For rooms_ring at 64 x 64 a 256^2 directional map is still about two
    texels per pixel footprint; twice that (the choice before) changed 0.16/255 on average against
    2048^2 maps, this 0.36/255 (0.65 % of pixels by more than 8/255, at shadow edges), and it makes
    generation about 20 % faster."""
    return int(max(128, 4 * image_size))


# Views rasterized per call (whole scenes): a shard's 1,000 64x64 views in one call held 49 MB of
# float images and 26 MB of shadow maps before encoding them (a fresh process first faulted those
# pages in, ~0.1 s), and a 100-scene shard at 256x256 peaked at 1,783 MB RSS; in batches of ~100
# views, 813 MB. The same bytes; at 64x64 the same speed within the host's noise.
RASTER_BATCH_VIEWS = 100


def scene_record(config: DatasetConfig, k: int) -> tuple[dict, list]:
    """Scene ``k``'s TOML description and its V cameras."""
    fam = FAMILIES[config.family]
    desc = fam.describe(np.random.default_rng([config.seed, k]), width=config.size, height=config.size,
                        **config.family_params)
    cams = fam.cameras(np.random.default_rng([config.seed, k, 1]), config.views, config.size, config.size)
    return desc, cams


def render_shard(config: DatasetConfig, index: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Render shard ``index``: arrays for ``write_shard`` and the scene records."""
    first = index * config.shard_size
    ks = range(first, min(config.scenes, first + config.shard_size))
    s, v, n = len(ks), config.views, config.size
    pairs, records = [], []
    viewpoints = np.empty((s, v, 7), np.float32)
    cameras = np.empty((s, v, 4, 4), np.float32)
    for row, k in enumerate(ks):
        desc, cams = scene_record(config, k)
        scene = scene_from_dict(desc, source=f"<{config.family} scene {k}>")
        records.append({"scene": k, "description": desc})
        for col, cam in enumerate(cams):
            pairs.append((scene, cam))
            viewpoints[row, col] = cam.viewpoint()
            cameras[row, col] = cam.camera_to_world()
    arrays: dict[str, np.ndarray] = {"viewpoints": viewpoints, "cameras": cameras,
                                     "fov": np.array([[c.fov for _, c in pairs[r * v:(r + 1) * v]] for r in range(s)], np.float32)}
    if config.renderer in ("raster", "both"):
        from .rasterizer import rasterize_rgb

        imgs = np.empty((s * v, n, n, 3), np.uint8)
        step = max(1, RASTER_BATCH_VIEWS // v) * v  # whole scenes
        for a in range(0, s * v, step):
            # Shadow maps sized to the views: the rasterizer's defaults (1024^2 directional maps)
            # are for full-size frames and would dominate the cost of 64x64 views.
            rgbs = rasterize_rgb(pairs[a:a + step], ssaa=config.ssaa, directional_resolution=shadow_map_size(n),
                                 shadow_resolution=shadow_map_size(n))
            for m, rgb in enumerate(rgbs):
                imgs[a + m] = to_srgb8(rgb)
        arrays["images"] = imgs.reshape(s, v, n, n, 3)
    if config.renderer in ("path", "both"):
        from .pathtracer import pathtrace_views

        imgs = np.empty((s * v, n, n, 3), np.uint8)
        for row, k in enumerate(ks):  # a scene's views in one launch per pass
            frames = pathtrace_views(pairs[row * v][0], [c for _, c in pairs[row * v:(row + 1) * v]],
                                     spp=config.spp, max_depth=config.max_depth,
                                     seeds=[config.seed * 1_000_003 + k * v + view for view in range(v)])
            for view, f in enumerate(frames):
                imgs[row * v + view] = to_srgb8(f.rgb)
        arrays["images_path" if config.renderer == "both" else "images"] = imgs.reshape(s, v, n, n, 3)
    return arrays, records


def _make_shard(config: DatasetConfig, out: str, index: int) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    arrays, records = render_shard(config, index)
    digest = write_shard(out, index, index * config.shard_size, arrays, records)
    return index, digest, time.perf_counter() - t0


def _manifest_name(shard_index: int, num_shards: int) -> str:
    return "manifest.json" if num_shards == 1 else f"manifest.part-{shard_index}-of-{num_shards}.json"


def _path_backend(config: DatasetConfig) -> dict[str, str]:
    """{"path_backend": "cpu" | "gpu"} for datasets with path-traced images (else {}): CUDA and the
    CPU do not round alike, so a dataset keeps to the backend it was started on."""
    if config.renderer not in ("path", "both"):
        return {}
    from .pathtracer import init_backend

    return {"path_backend": init_backend("auto")[0]}


def _settings_diff(a: dict, b: dict) -> list[str]:
    """The settings in which manifests ``a`` and ``b`` differ: their config, and the renderers'
    settings derived from it (those changed between versions), named ``render_settings.KEY``."""
    def flat(m: dict) -> dict:
        return {**(m.get("config") or {}),
                **{f"render_settings.{k}": v for k, v in (m.get("render_settings") or {}).items()}}

    fa, fb = flat(a), flat(b)
    return sorted(k for k in {*fa, *fb} if fa.get(k) != fb.get(k))


def _check_same_settings(out: Path, want: dict) -> None:
    for path in sorted(out.glob("manifest*.json")):
        try:
            have = json.loads(path.read_text())
        except ValueError:
            raise ShardError(f"{path}: not valid JSON; remove it to start over") from None
        diff = _settings_diff(have, want)
        if diff:
            raise ShardError(f"{path}: made with other settings ({', '.join(diff)} differ); "
                             "use another --out folder or the same settings to resume")


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def auto_workers(config: DatasetConfig, shards: int) -> int:
    """Processes for ``workers=0``: one per core for the rasterizer, one for the path tracer.

    Rasterizing a 64 x 64 view takes about as long as building its scene and encoding its image in
    Python, so one process cannot keep two cores busy (one process: ~1,450 views/s on 2 cores;
    two processes with one rendering thread each: 1,900-2,400, depending on the host's load).
    Taichi already runs one path-tracing kernel on every core, and a second process would only
    compete for them (an explicit ``workers`` > 1 is obeyed all the same)."""
    if config.renderer != "raster":
        return 1
    return max(1, min(usable_cores(), shards))


def _init_worker(threads: int, parent: int) -> None:
    """Pool initializer: split the cores between the processes (no oversubscription), leave Ctrl-C to
    the parent, and on Linux die with the parent, so that a killed run leaves no worker behind still
    writing shards."""
    import signal

    # Ctrl-C reaches the whole process group: the parent stops the run (its workers finish the shard
    # in hand), instead of each worker printing its own KeyboardInterrupt traceback (until here the
    # worker has SIGINT blocked: see _submit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)


@contextlib.contextmanager
def _part_lock(out: Path, shard_index: int, num_shards: int):
    """Hold an exclusive lock on this part of the folder (all of it for an unsplit run) while a run
    generates it, so that a second run of the same part (the same command started twice) is refused
    instead of removing the first one's half-written shards as its own. flock: the system releases it
    when the process ends, however it ends, so a run killed with -9 resumes without a stale lock.
    The lock file (``.lock``, or ``.lock-part-i-of-n``; it holds the pid) stays in the folder."""
    path = out / (".lock" if num_shards == 1 else f".lock-part-{shard_index}-of-{num_shards}")
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unguarded
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            what = "this dataset" if num_shards == 1 else f"part {shard_index} of {num_shards} of this dataset"
            raise RenderError(f"{out}: another process (pid {pid}) is generating {what} now ({path.name} is "
                              "locked); let it finish, or stop it and run the command again to resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)


def generate(config: DatasetConfig, out: str | Path, *, workers: int = 0, shard_index: int = 0, num_shards: int = 1,
             progress: bool = True, on_shard: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Generate (or resume) the shards ``j`` with ``j % num_shards == shard_index`` into ``out``.

    Complete shards already on disk whose checksums hold are kept; half-written ones are removed.
    After every shard the manifest (``manifest.json``, or ``manifest.part-i-of-n.json`` for one of n
    processes) is rewritten atomically. Each of n processes ends by joining the parts (``merge``)
    if every shard is done, so the last one to finish writes ``manifest.json``: the split needs no
    coordination beyond the shared seed and folder. Returns this process's manifest, with
    ``"merged": True`` when it wrote ``manifest.json`` for all the parts.
    workers: processes rendering shards at once (0: ``auto_workers``); the bytes do not depend on it.
    Path-traced datasets' workers are spawned, so they import the calling script: call this under
    ``if __name__ == "__main__":`` there (raster-only ones fork on Linux; ``worker_start_method``).
    One run per part and folder at a time (``_part_lock``).
    """
    config.check()
    if not 0 <= shard_index < num_shards:
        raise RenderError(f"--shard-index {shard_index}; expected 0..{num_shards - 1} for --num-shards {num_shards}")
    out = Path(out)
    made_folder = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with _part_lock(out, shard_index, num_shards) as lock:  # one process per part and folder
        manifest = config.manifest()
        manifest["render_settings"].update(_path_backend(config))
        _check_same_settings(out, manifest)
        mine = [j for j in range(config.num_shards) if j % num_shards == shard_index]
        clean_temporaries(out, mine)  # only this process's: the other parts may be writing theirs
        manifest["shards"] = {}
        todo = []
        for j in mine:
            if (out / shard_name(j) / "shard.json").is_file() and verify_shard(out, j) is None:
                manifest["shards"][str(j)] = sha256_file(out / shard_name(j) / "shard.json")
            else:
                todo.append(j)
        name = _manifest_name(shard_index, num_shards)
        fresh = not (out / name).exists()
        write_manifest(out, manifest, name)
        size_of = lambda j: min(config.scenes, (j + 1) * config.shard_size) - j * config.shard_size  # noqa: E731
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(size_of(j) for j in mine), initial=sum(size_of(j) for j in mine if j not in todo),
                       unit="scene", desc=f"{config.family} ({config.renderer})", dynamic_ncols=True)
        t_start, views_done = time.perf_counter(), 0

        def done(j: int, digest: str) -> None:
            nonlocal views_done
            manifest["shards"][str(j)] = digest
            write_manifest(out, manifest, name)
            views_done += size_of(j) * config.views
            if bar is not None:
                bar.update(size_of(j))
                bar.set_postfix(views_per_s=f"{views_done / (time.perf_counter() - t_start):.0f}")
            if on_shard is not None:
                on_shard(j)

        if workers <= 0:
            workers = auto_workers(config, len(todo))
        try:
            if workers <= 1 or len(todo) <= 1:
                for j in todo:
                    done(j, _make_shard(config, str(out), j)[1])
            else:
                _generate_parallel(config, out, todo, workers, done)
        except BaseException:
            if fresh and not manifest["shards"]:
                # nothing was made: leave no manifest behind to refuse the corrected command's settings
                (out / name).unlink(missing_ok=True)
                lock.unlink(missing_ok=True)  # (still held, so no other run is using it)
                if made_folder and not any(out.iterdir()):
                    out.rmdir()
            raise
        finally:
            if bar is not None:
                bar.close()
        manifest["seconds"] = round(time.perf_counter() - t_start, 3)  # informative only; not checksummed
        if num_shards > 1:
            manifest["merged"] = merge(out, if_complete=True) is not None
        return manifest


def _submit(pool: ProcessPoolExecutor, *args):
    """``pool.submit`` with SIGINT blocked in this thread: a worker process it starts inherits the
    blocked signal through exec, so a Ctrl-C that reaches the process group while the worker is
    still importing (seconds on a slow machine, before _init_worker runs) stays pending there until
    _init_worker ignores it, instead of printing a KeyboardInterrupt traceback. This process gets a
    SIGINT that came meanwhile when the mask is restored."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        return pool.submit(*args)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _taichi_running() -> bool:
    """Whether this process has started Taichi's runtime."""
    ti = sys.modules.get("taichi")
    if ti is None:
        return False
    try:
        return ti.lang.impl.get_runtime().prog is not None
    except Exception:  # noqa: BLE001 - another Taichi than we know: assume it runs
        return True


def worker_start_method(config: DatasetConfig) -> str:
    """How ``generate`` starts its worker processes: ``"fork"`` for raster-only datasets on Linux
    while numba's threading layer is fork-safe (``workqueue``, which ``render.rasterizer`` selects,
    or ``tbb``) and this process has not started Taichi, else ``"spawn"``.

    A forked worker starts with this process's imports and the kernels it has loaded. A spawned one
    first spends ~1.2 s importing numpy, numba and the renderer, initialising numba and loading
    its cached kernels: an eighth of a 2,000-scene run on 2 cores, during which its core does no
    rendering. Forking is safe here: the pool forks from the main thread before the threads that
    feed the workers start, and the worker only rasterizes. Taichi's runtime must not be forked
    (its thread pool, a GPU's context: a worker that freed a Taichi object would call into them),
    so path-traced datasets spawn, and so does a process that path-traced before. GNU OpenMP,
    numba's ``omp`` layer on Linux, is not fork-safe either. On other systems fork is unsafe or
    absent."""
    if config.renderer != "raster" or not sys.platform.startswith("linux") or _taichi_running():
        return "spawn"
    import numba

    from . import rasterizer  # noqa: F401 - (its import selects the threading layer, as for its kernels)

    return "fork" if numba.config.THREADING_LAYER in ("workqueue", "tbb") else "spawn"


def _generate_parallel(config: DatasetConfig, out: Path, todo: list[int], workers: int,
                       done: Callable[[int, str], None]) -> None:
    """Render ``todo`` with this process and ``workers - 1`` others (``worker_start_method``), the
    cores split evenly between them. This process takes part rather than waiting (a spawned
    worker needs 1-2 s to import and load its compiled kernels, about two shards' worth).
    Each worker has a thread here that hands it its next shard the moment it returns one. (Handing
    them out between this process's own shards left a worker idle for up to a shard's time after
    each of its shards: a quarter of its time, in a 2,000-scene run on 2 cores.)
    Shards are reported to ``done`` in ``todo`` order, so the manifest grows in order."""
    import multiprocessing as mp
    import threading

    import numba

    threads = max(1, usable_cores() // workers)
    # This process takes shards from the front, the workers from the back: the manifest and the
    # progress bar (which follow todo order) then advance from the start, while the workers start up.
    pending = deque(todo)
    lock = threading.Lock()  # guards pending, finished, failures
    finished: dict[int, str] = {}
    failures: list[BaseException] = []
    stop = threading.Event()
    order = iter(todo)
    next_done = next(order, None)

    def claim(front: bool) -> int | None:
        with lock:
            if stop.is_set() or not pending:
                return None
            return pending.popleft() if front else pending.pop()

    def report() -> None:
        nonlocal next_done
        while True:
            with lock:
                if next_done is None or next_done not in finished:
                    return
                j, digest = next_done, finished.pop(next_done)
            done(j, digest)
            next_done = next(order, None)

    def feed(pool: ProcessPoolExecutor, j: int, fut) -> None:
        try:
            while True:
                digest = fut.result()[1]
                with lock:
                    finished[j] = digest
                if (j := claim(front=False)) is None:
                    return
                fut = _submit(pool, _make_shard, config, str(out), j)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            with lock:
                failures.append(e)
            stop.set()

    if config.renderer in ("raster", "both"):
        from .rasterizer import warm_up

        # compile (or load) the kernels here first, so that forked workers start with them and
        # spawned ones find them in numba's cache: the serial views kernel when every process
        # runs on one core (as with the default workers)
        warm_up(parallel=threads > 1)
    from .srgb8 import to_srgb8_fast

    to_srgb8_fast(np.zeros(3, np.float32))  # and the 8-bit encoding
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, before))
    try:
        with ProcessPoolExecutor(max_workers=workers - 1, mp_context=mp.get_context(worker_start_method(config)),
                                 initializer=_init_worker, initargs=(threads, os.getpid())) as pool:
            # Each worker's first shard is submitted from this thread, which so starts every worker
            # process (a fork context starts them all at the first): a worker dies with the thread
            # that started it (PR_SET_PDEATHSIG is per thread), the feeding threads end one by one
            # as the shards run out, and no feeding thread runs yet when a worker is forked.
            first = [(j, _submit(pool, _make_shard, config, str(out), j))
                     for _ in range(workers - 1) if (j := claim(front=False)) is not None]
            feeders = [threading.Thread(target=feed, args=(pool, j, fut), daemon=True) for j, fut in first]
            for t in feeders:
                t.start()
            try:
                while (j := claim(front=True)) is not None:
                    digest = _make_shard(config, str(out), j)[1]
                    with lock:
                        finished[j] = digest
                    report()
                for t in feeders:
                    while t.is_alive():
                        t.join(0.05)
                        report()
            except BaseException:
                stop.set()  # the workers finish the shard in hand (the pool's exit waits for them)
                raise
        if failures:
            raise failures[0]
    finally:
        numba.set_num_threads(before)
    report()


def merge(out: str | Path, if_complete: bool = False) -> dict[str, Any] | None:
    """Join ``manifest.part-*.json`` files of a distributed run into ``manifest.json`` (checking they
    share settings and together cover every shard); returns the merged manifest.
    if_complete: return None instead of refusing when some shards are not done yet (what every
    part does when it finishes, so that the last one to finish writes manifest.json)."""
    out = Path(out)
    parts = sorted(out.glob("manifest.part-*.json"))
    base = None
    shards: dict[str, str] = {}
    if (out / "manifest.json").is_file():
        base = read_manifest(out)
        shards.update(base.get("shards", {}))
    for p in parts:
        try:
            m = json.loads(p.read_text())
        except FileNotFoundError:  # another part finishing at the same moment merged it already
            continue
        if base is None:
            base = m
        elif diff := _settings_diff(m, base):
            raise ShardError(f"{p}: made with other settings than {parts[0] if parts else 'manifest.json'} "
                             f"({', '.join(diff)} differ)")
        shards.update(m.get("shards", {}))
    if base is None:
        if if_complete:  # every part vanished between listing and reading: another process merged them
            return None
        raise ShardError(f"{out}: no manifest.json or manifest.part-*.json to merge")
    missing = [j for j in range(base["num_shards"]) if str(j) not in shards]
    if missing and if_complete:
        return None
    if missing:
        raise ShardError(f"{out}: shards {', '.join(shard_name(j) for j in missing[:5])}"
                         f"{' …' if len(missing) > 5 else ''} are not done yet; finish every --shard-index first")
    merged = {**base, "shards": {str(j): shards[str(j)] for j in range(base["num_shards"])}}
    write_manifest(out, merged)
    for p in parts:
        p.unlink(missing_ok=True)
    return merged


def verify(out: str | Path) -> list[str]:
    """Recompute every shard's checksums against the manifest; returns one line per problem."""
    out = Path(out)
    m = read_manifest(out)
    problems = []
    for j in range(m["num_shards"]):
        listed = str(j) in m.get("shards", {})
        problem = verify_shard(out, j, m.get("shards", {}).get(str(j)))
        if not listed and problem is None:  # written by a run stopped before it updated the manifest
            problem = f"{out / shard_name(j)}: whole, but not in manifest.json yet"
        elif not listed and problem == f"{out / shard_name(j)}: missing":
            problem = f"{out / shard_name(j)}: not made yet"
        if problem:
            problems.append(problem)
    return problems


def _sheet_title(name: str, manifest: dict, images: str) -> str:
    """A contact sheet's title; for a paired dataset (``both``) it says which images it shows."""
    m = manifest
    shown = (" (path-traced images)" if images == "images_path" else " (raster images)") if m["renderer"] == "both" else ""
    return f"{name}: {m['family']}, {m['renderer']}{shown}, {m['image_size']}px, seed {m['seed']}"


def contact_sheet(out: str | Path, scenes: int = 8, path: str | Path = "sheet.png", images: str = "images") -> Path:
    """A PNG with one row per scene (its views in order) and the 7 viewpoint numbers under each view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .image_io import save_figure
    from .shards import open_shard

    out = Path(out)
    m = read_manifest(out)
    if images == "images_path" and m["renderer"] != "both":
        raise ShardError(f"{out}: a --renderer {m['renderer']} dataset has one image per view (no separate "
                         "path-traced images); --path-images is for --renderer both datasets")
    if scenes < 1:
        raise ValueError(f"scenes {scenes}; expected at least 1")
    rows = min(scenes, m["scenes"])
    v = m["views"]
    fig, axes = plt.subplots(rows, v, figsize=(1.25 * v, 1.55 * rows), squeeze=False)
    shard_cache: dict[int, Any] = {}
    for r in range(rows):
        j = r // m["shard_size"]
        if j not in shard_cache:
            shard_cache[j] = open_shard(out, j, m["shards"].get(str(j)))
        sh = shard_cache[j]
        src = sh.images if images == "images" else sh.images_path
        for c in range(v):
            ax = axes[r, c]
            ax.imshow(src[r - sh.first_scene, c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            vp = sh.viewpoints[r - sh.first_scene, c]
            ax.set_xlabel(f"({vp[0]:.1f},{vp[1]:.1f},{vp[2]:.1f})\n"
                          f"yaw {math.degrees(math.atan2(vp[4], vp[3])):.0f}° pitch {math.degrees(math.atan2(vp[6], vp[5])):.0f}°",
                          fontsize=5)
            if c == 0:
                ax.set_ylabel(f"scene {r}", fontsize=6)
    # the title 0.05 inch from the top and 0.3 inch kept for it, however many rows
    fig.suptitle(_sheet_title(out.name, m, images), fontsize=8,
                 y=1.0 - 0.05 / (1.55 * rows), va="top")
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.3 / (1.55 * rows)))
    path = Path(path)
    save_figure(fig, path)
    return path
