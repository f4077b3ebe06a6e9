"""The ``trirender`` console script. A thin layer: parse arguments, call ``render``/``neural``,
write files, print. Errors from bad input are printed in one or two lines, with exit status 2."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

# `trirender --help` lists the verbs in the order of the work: scenes, pictures, datasets, learning
VERB_ORDER = ("scene", "render", "compare", "convergence", "dataset", "train", "eval", "novel", "bench")


class _Verbs(TyperGroup):
    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: VERB_ORDER.index(n) if n in VERB_ORDER else len(VERB_ORDER))


# Each command's short_help is its line in the parent's --help (click cuts a longer first sentence
# short with "...").
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, cls=_Verbs,
                  help="Render, compare and learn scenes: path tracer, rasterizer and GQN neural renderer.")
scene_app = typer.Typer(no_args_is_help=True, help="Inspect, generate and convert scenes.")
app.add_typer(scene_app, name="scene", help="Inspect, generate and convert scenes (info, generate, convert).",
              short_help="Inspect, generate and convert scenes.")

# never wrap messages (scripts parse them); no rich markup: file names and messages may hold brackets
out = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

SceneArg = typer.Argument(..., help="A .toml scene, a mesh/scene file (OBJ, PLY, STL, OFF, GLB/glTF) or a built-in "
                                    "scene name: cornell_box, rooms_ring, shepard_metzler.")


class Renderer(str, Enum):
    raster = "raster"
    path = "path"


class DatasetRenderer(str, Enum):
    raster = "raster"
    path = "path"
    both = "both"


class Backend(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


def check_out(path: Optional[Path], option: str, suffixes: tuple[str, ...] = (), folder: bool = False) -> None:
    """Refuse an output path before any work is done: a wrong extension, a folder where a file is
    wanted (or the reverse), or a place where nothing can be written (the nearest existing folder
    is probed with a temporary file; missing folders below it are created later)."""
    if path is None:
        return
    if suffixes and path.suffix.lower() not in suffixes:
        raise typer.BadParameter(f"{path}: expected a {' or '.join(suffixes)} file name", param_hint=option)
    if path.exists() and path.is_dir() != folder:
        raise typer.BadParameter(f"{path} is a {'folder' if path.is_dir() else 'file'}; expected "
                                 f"{'a folder' if folder else 'a file name'}", param_hint=option)
    place = path.absolute() if folder else path.absolute().parent
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise typer.BadParameter(f"{path}: {place} is a file, so no folder can be made there", param_hint=option)
    try:
        with tempfile.TemporaryFile(dir=place):
            pass
    except OSError as exc:
        raise typer.BadParameter(f"{path}: cannot write in {place} ({exc.strerror or exc})", param_hint=option) from None


def check_outputs(*outputs: tuple, inputs: tuple = ()) -> None:
    """``check_out`` for each (path, option[, suffixes]) of one command, then refuse two of them
    naming the same file (the second write would replace the first), or one naming an input of the
    command (it would be overwritten); inputs are (path, what it is), e.g. ``--reference's input``."""
    seen: dict[Path, str] = {Path(path).absolute().resolve(): what for path, what in inputs if path is not None}
    for path, option, *suffixes in outputs:
        check_out(path, option, *suffixes)
        if path is None:
            continue
        key = path.absolute().resolve()
        if key in seen:
            raise typer.BadParameter(f"{path} is also {seen[key]}; expected another file name", param_hint=option)
        seen[key] = f"{option}'s file"


Seed = typer.Option(0, min=0, help="Random seed (path tracer noise; built-in procedural scenes).")
CameraIndex = typer.Option(0, "--camera", help="Which of the scene's cameras to use (0, 1, ...).")
# render.schema.MAX_IMAGE_SIDE and render.pathtracer.MAX_SPP, written out so that the CLI starts
# without importing render (a quarter of a second); a test keeps them equal
MAX_SIDE = 16384
MAX_SPP = 2**31 - 1
Width = typer.Option(None, min=1, max=MAX_SIDE, help="Override the camera's image width.")
Height = typer.Option(None, min=1, max=MAX_SIDE, help="Override the camera's image height.")


def _load(spec: str, seed: int = 0, outputs: tuple = ()):
    """The scene ``spec`` (a file or a built-in family); outputs (as check_outputs takes them) are
    refused when they name a file the scene reads: its own file, a mesh, a texture, an environment map."""
    from render import FAMILIES, load_scene

    s = load_scene(spec, seed=seed) if spec in FAMILIES else load_scene(spec)
    check_outputs(*outputs, inputs=tuple((f, "a file the scene reads") for f in s.files()))
    return s


# --- scene ----------------------------------------------------------------------------------------
@scene_app.command("info")
def scene_info(scene: str = SceneArg, json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
               seed: int = typer.Option(0, min=0, help="Seed for a built-in procedural scene.")):
    """Print counts, bounds, materials, lights and cameras of a scene."""
    s = _load(scene, seed)
    info = s.summary()
    if json_out:
        print(json.dumps(info, indent=2))
        return
    t = Table(title=f"scene {info['source']}", show_header=False)
    t.add_row("triangles", str(info["triangles"]))
    t.add_row("objects", ", ".join(f"{o.name} ({o.shape})" for o in s.objects))
    t.add_row("emitters", f"{info['emitter_triangles']} triangles, {info['emitter_area']:.4g} m²")
    t.add_row("bounds", f"{info['bounds'][0]} .. {info['bounds'][1]}")
    t.add_row("materials", ", ".join(f"{k} ({v})" for k, v in info["materials"].items()))
    t.add_row("lights", ", ".join(info["lights"]) or "none")
    env = s.environment
    rad = ", ".join(f"{x:g}" for x in env.radiance)
    t.add_row("environment", (f"map {env.file} times ({rad})" if env.file else f"constant radiance ({rad})")
              if any(env.radiance) else "none")
    for i, c in enumerate(info["cameras"]):
        t.add_row(f"camera {i}", f"at {c['position']} looking at {c['look_at']}, fov {c['fov']}°, {c['size'][0]}x{c['size'][1]}")
    out.print(t)


@scene_app.command("generate")
def scene_generate(family: str = typer.Argument(..., help="cornell_box, rooms_ring or shepard_metzler."),
                   out_path: Path = typer.Option(..., "--out", help="TOML file to write."),
                   seed: int = typer.Option(0, min=0, help="Random seed; the same seed gives the same scene.")):
    """Generate one scene of a procedural family and write it as TOML."""
    from render import FAMILIES, make_scene, save_scene

    check_out(out_path, "--out", (".toml",))
    if family not in FAMILIES:
        raise typer.BadParameter(f"unknown family {family!r}; expected one of: {', '.join(FAMILIES)}", param_hint="FAMILY")
    s = make_scene(family, seed=seed)
    save_scene(s, out_path)
    out.print(f"wrote {out_path} ({s.num_triangles} triangles, {_count(len(s.objects), 'object')})")


@scene_app.command("convert", short_help="Convert a mesh/scene file into a TOML scene.")
def scene_convert(src: Path = typer.Argument(..., help="A mesh/scene file (GLB/glTF, OBJ, PLY, STL) or a TOML scene."),
                  out_path: Path = typer.Option(..., "--out", help="TOML file to write."),
                  width: int = typer.Option(512, min=1, max=MAX_SIDE, help="Image width of the framing camera."),
                  height: int = typer.Option(512, min=1, max=MAX_SIDE, help="Image height of the framing camera.")):
    """Convert a mesh/scene file into a TOML scene (materials, framing camera, default light)."""
    from render import load_scene, save_scene
    from render.loader import MESH_SUFFIXES, mesh_scene_description, scene_from_dict

    check_outputs((out_path, "--out", (".toml",)), inputs=((src, "SRC's input"),))
    if src.suffix.lower() in MESH_SUFFIXES:
        s = scene_from_dict(mesh_scene_description(src, width, height), source=str(src), base_dir=src.parent)
    else:
        s = load_scene(src)
    save_scene(s, out_path)
    out.print(f"wrote {out_path} ({s.num_triangles} triangles, {_count(len(s.objects), 'object')})")


# --- render ---------------------------------------------------------------------------------------
@app.command("render", short_help="Render a scene with the rasterizer or the path tracer.")
def render_cmd(
    ctx: typer.Context,
    scene: str = SceneArg,
    out_path: Path = typer.Option(Path("render.png"), "--out", help="Image to write: .png (sRGB 8-bit) or .exr (linear)."),
    renderer: Renderer = typer.Option(Renderer.raster, help="raster (numba z-buffer) or path (Taichi path tracer)."),
    width: Optional[int] = Width,
    height: Optional[int] = Height,
    camera_index: int = CameraIndex,
    ssaa: int = typer.Option(1, help="Raster: supersampling factor per axis (1, 2 or 4)."),
    shadows: bool = typer.Option(True, help="Raster: shadow maps on/off."),
    spp: int = typer.Option(64, min=1, max=MAX_SPP, help="Path: samples per pixel."),
    max_depth: int = typer.Option(8, min=-1, help="Path: maximum path segments (0 black, 1 emitters only, 2 direct, "
                                                   "-1 unbounded)."),
    seed: int = Seed,
    backend: Backend = typer.Option(Backend.auto, help="Path: cpu, gpu or auto."),
    time_budget: Optional[float] = typer.Option(None, "--time", help="Path: stop at the last whole pass that ends "
                                                "within S seconds of wall time (start-up and compile included)."),
    aov: List[str] = typer.Option([], help="AOVs written beside the image: depth,normal,albedo,id (comma-separated "
                                           "or repeated)."),
    stats: Optional[Path] = typer.Option(None, help="Write timings and settings as JSON."),
):
    """Render a scene with the rasterizer or the path tracer."""
    from render import AOV_NAMES
    from render.image_io import write_json_atomic

    aovs = tuple(dict.fromkeys(a.strip() for item in aov for a in item.split(",") if a.strip()))
    for a in aovs:
        if a not in AOV_NAMES:
            raise typer.BadParameter(f"unknown AOV {a!r}; expected some of: {', '.join(AOV_NAMES)}", param_hint="--aov")
    if time_budget is not None and not time_budget > 0:
        raise typer.BadParameter(f"{time_budget}; expected seconds > 0", param_hint="--time")
    from render.frame import aov_path

    aov_outs = [(aov_path(out_path, a), f"--aov {a}") for a in aovs]
    if "id" in aovs:  # ids above 65534 go to .id.npy instead of .id.png
        aov_outs.append((aov_path(out_path, "id", wide_ids=True), "--aov id"))
    outputs = ((out_path, "--out", (".png", ".exr")), (stats, "--stats"), *aov_outs)
    check_outputs(*outputs)
    other = {Renderer.raster: ("spp", "max_depth", "backend", "time_budget"), Renderer.path: ("ssaa", "shadows")}
    given = [f"--{_option_name(ctx, p)}" for p in other[renderer]
             if getattr(ctx.get_parameter_source(p), "name", None) == "COMMANDLINE"]
    if given:
        err.print(f"note: {', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to the "
                  f"{renderer.value} renderer; ignored")
    t0 = time.perf_counter()
    s = _load(scene, seed, outputs)
    cam = _camera_for(s, width, height, camera_index)
    load_seconds = time.perf_counter() - t0
    if renderer is Renderer.raster:
        _check_ssaa(ssaa)
        from render import rasterize
        from render.notice import notice_if_slow

        with notice_if_slow("compiling the rasterizer's numba kernels (first run only, under a minute; later "
                            "runs load them from numba's cache)"):
            frame = rasterize(s, cam, ssaa=ssaa, shadows=shadows)
    else:
        from render import pathtrace

        frame = pathtrace(s, cam, spp=spp, max_depth=max_depth, seed=seed, backend=backend.value,
                          time_budget=time_budget, progress=True, interruptible=True)
    written = frame.save(out_path, aovs)
    info = {"scene": scene, "renderer": renderer.value, "width": cam.width, "height": cam.height,
            "load_seconds": load_seconds, **frame.meta, "outputs": [str(p) for p in written]}
    if stats:
        write_json_atomic(stats, info)
    timing = ", ".join(f"{k} {info[k]:.3g}s" for k in ("load_seconds", "compile_seconds", "render_seconds") if k in info)
    if renderer is Renderer.path and info["spp"] < info["spp_requested"]:
        why = "Ctrl-C" if info["interrupted"] else f"--time {time_budget:g}s"
        timing += f"; {why} stopped it at {info['spp']} of {info['spp_requested']} spp"
    out.print(f"wrote {', '.join(str(p) for p in written + ([stats] if stats else []))} "
              f"({cam.width}x{cam.height}, {renderer.value}; {timing})")
    if info.get("interrupted"):
        raise typer.Exit(130)


# --- compare --------------------------------------------------------------------------------------
def _reference(path: Optional[Path], cam, linear_metrics_only: bool = False):
    """The reference image (linear float32 (H, W, 3)) checked against the camera's size, or None.
    A PNG or JPEG reference is sRGB-decoded from 8 or 16 bits, so it cannot hold radiance above 1
    (an emitter, a highlight): PSNR and SSIM, taken on the clipped sRGB images, stay fair, RMSE and
    MAE on linear values do not. ``linear_metrics_only`` (convergence, which plots RMSE alone)
    refuses such a file; otherwise a note says so."""
    from render import RenderError, read_image

    if path is None:
        return None
    want = "a linear EXR" if linear_metrics_only else "a linear EXR (or PNG)"
    if not path.is_file():
        raise RenderError(f"--reference {path}: file not found; expected {want} of the scene")
    import numpy as np

    try:
        ref = read_image(path)
    except Exception as exc:  # not an image, or a format imageio cannot read
        raise RenderError(f"--reference {path}: cannot read it as an image ({type(exc).__name__}: {exc}); "
                          f"expected {want} of the scene") from None
    channels = ref.shape[2] if ref.ndim == 3 else 1
    if channels < 3:
        raise RenderError(f"--reference {path}: {channels} channel(s); expected an RGB image")
    if ref.shape[:2] != (cam.height, cam.width):
        raise RenderError(f"--reference {path}: image is {ref.shape[1]}x{ref.shape[0]}; expected {cam.width}x{cam.height} "
                          "like the scene's camera (or pass --width/--height)")
    ref = np.ascontiguousarray(ref[..., :3], np.float32)
    bad = int((~np.isfinite(ref)).any(axis=2).sum())
    if bad:
        raise RenderError(f"--reference {path}: {bad} pixel(s) are not finite; expected finite radiance")
    if path.suffix.lower() != ".exr":
        why = (f"--reference {path}: a {path.suffix or 'non-EXR'} image holds display values in [0, 1] (sRGB-decoded), "
               "not radiance above 1")
        if linear_metrics_only:
            raise RenderError(f"{why}; expected a linear EXR, since convergence measures linear RMSE")
        err.print(f"note: {why}; PSNR and SSIM against it are fair, RMSE and MAE are not (a linear EXR keeps them)")
    return ref


def _option_name(ctx, param: str) -> str:
    """The long option a command parameter was given with (time_budget -> time; a flag set off ->
    its --no- form)."""
    for p in ctx.command.params:
        if p.name == param:
            opts = p.secondary_opts if ctx.params.get(param) is False and p.secondary_opts else p.opts
            return max(opts, key=len).lstrip("-")
    return param


def _count(n: int, noun: str) -> str:
    """'1 object', '3 objects'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _camera_for(s, width, height, index: int = 0):
    """Camera ``index`` of scene ``s``, resized when --width/--height are given."""
    from render import RenderError

    if not 0 <= index < len(s.cameras):
        raise typer.BadParameter(f"scene has {len(s.cameras)} camera(s); expected 0..{len(s.cameras) - 1}",
                                 param_hint="--camera")
    cam = s.cameras[index]
    if width is not None or height is not None:
        try:
            cam = cam.with_size(width or cam.width, height or cam.height)
        except ValueError as exc:
            raise RenderError(str(exc)) from None
    return cam


@app.command("compare", short_help="Raster | path-traced | error map, with the metrics.")
def compare_cmd(
    scene: str = SceneArg,
    out_path: Path = typer.Option(Path("compare.png"), "--out", help="The picture: raster | path-traced | error heat map."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every number as JSON."),
    spp: int = typer.Option(64, min=1, max=MAX_SPP, help="Path tracer samples per pixel."),
    max_depth: int = typer.Option(8, min=-1, help="Path tracer path segments."),
    ssaa: int = typer.Option(2, help="Rasterizer supersampling per axis (1, 2, 4)."),
    seed: int = typer.Option(0, min=0, help="Path tracer seed (and procedural scene seed)."),
    backend: Backend = typer.Option(Backend.auto, help="Path tracer backend."),
    width: Optional[int] = Width,
    height: Optional[int] = Height,
    camera_index: int = CameraIndex,
    reference: Optional[Path] = typer.Option(None, help="Also score each image against this linear EXR (a PNG "
                                                  "scores PSNR and SSIM fairly, not RMSE)."),
    neural: Optional[Path] = typer.Option(None, help="A training run folder: add the GQN's rendering as a third "
                                                     "column (all images at the model's size, e.g. 64x64)."),
    context: int = typer.Option(3, min=1, help="With --neural: context views rendered by the rasterizer."),
):
    """Render a scene with both renderers and write a side-by-side picture with the metrics."""
    from render import RenderError, compare, pathtrace, rasterize
    from render.image_io import write_json_atomic
    from render.metrics import compare_picture, footer_text

    _check_ssaa(ssaa)
    outputs = ((out_path, "--out", (".png",)), (json_out, "--json"))
    from .cli_neural import run_inputs

    run_files = run_inputs(neural, None, "a file of the --neural run") if neural is not None else ()
    check_outputs(*outputs, inputs=((reference, "--reference's input"), *run_files))
    s = _load(scene, seed, outputs)
    model = None
    if neural is not None:
        if not (neural / "config.json").is_file():
            raise RenderError(f"--neural {neural}: not a training run folder (no config.json); expected the --out "
                              "folder of `trirender train`")
        from neural.novel import load_run

        from .cli_neural import _errors

        with _errors():  # an unreadable checkpoint or config: one line naming the file
            model, ncfg = load_run(neural)
        if width is not None or height is not None:
            err.print(f"note: --width/--height ignored: with --neural every image is at the model's size, "
                      f"{ncfg.image_size}x{ncfg.image_size}")
        width = height = ncfg.image_size
    cam = _camera_for(s, width, height, camera_index)
    ref = _reference(reference, cam)
    raster = rasterize(s, cam, ssaa=ssaa)
    path = pathtrace(s, cam, spp=spp, max_depth=max_depth, seed=seed, backend=backend.value, progress=True)
    c = compare(raster, path)
    if ssaa > 1:  # AOVs through the pixel centres on both sides (at ssaa > 1 the rasterizer's come from a subsample)
        from render.metrics import aov_agreement

        c.aov = aov_agreement(rasterize(s, cam, ssaa=1), path)
    scores = {}
    if ref is not None:
        scores = {"raster": compare(raster.rgb, ref), "path": compare(path.rgb, ref)}
    neural_panel = []
    if model is not None:
        from neural.novel import context_from_scene, predict
        from render.image_io import srgb_decode

        t0 = time.perf_counter()
        ctx_img, ctx_vp = context_from_scene(s, context, cam.width, seed)
        guess = srgb_decode(predict(model, ctx_img, ctx_vp, cam.viewpoint()[None], samples=1, seed=seed)[0, 0])
        t_n = time.perf_counter() - t0
        scores["neural vs path"] = compare(guess, path.rgb)
        neural_panel = [(f"neural (GQN {neural.name}), {context} context views\n{t_n:.2f} s", guess)]
    t_r = raster.meta.get("render_seconds", float("nan"))
    t_p = path.meta.get("render_seconds", float("nan"))
    panels = [(f"raster (numba), ssaa {ssaa}\n{t_r:.2f} s", raster.rgb),
              (f"path (Taichi {path.meta.get('backend', '')}), {spp} spp, depth {max_depth}\n{t_p:.2f} s", path.rgb),
              *neural_panel]
    compare_picture(panels, c.error_map, "|raster - path| (RMS over RGB)", footer_text(c, scores), out_path,
                    title=f"{scene}  {cam.width}x{cam.height}")
    result = {"scene": scene, "width": cam.width, "height": cam.height,
              "raster": {"ssaa": ssaa, "render_seconds": t_r, "compile_seconds": raster.meta.get("compile_seconds")},
              "path": {"spp": spp, "max_depth": max_depth, "seed": seed, "backend": path.meta.get("backend"),
                       "render_seconds": t_p, "compile_seconds": path.meta.get("compile_seconds")},
              "raster_vs_path": c.to_dict(),
              "vs_reference": {k: v.to_dict() for k, v in scores.items() if " vs " not in k}}
    if model is not None:
        result["neural"] = {"run": str(neural), "context": context, **scores["neural vs path"].to_dict()}
    if json_out:
        write_json_atomic(json_out, result)
    out.print(footer_text(c, scores))
    out.print(f"wrote {out_path}" + (f" and {json_out}" if json_out else ""))


@app.command("convergence", short_help="Plot the path tracer's RMSE against spp.")
def convergence_cmd(
    scene: str = SceneArg,
    max_spp: int = typer.Option(64, min=1, max=MAX_SPP, help="Largest spp; the path tracer runs at 1, 2, 4, ... and "
                                                             "max_spp."),
    reference: Optional[Path] = typer.Option(None, help="Linear EXR to measure against (default: 16x max_spp of our own)."),
    out_path: Path = typer.Option(Path("convergence.png"), "--out", help="The log-log plot."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the numbers as JSON."),
    max_depth: int = typer.Option(8, min=-1, help="Path tracer path segments."),
    ssaa: int = typer.Option(2, help="Rasterizer supersampling per axis (1, 2, 4)."),
    seed: int = typer.Option(0, min=0, help="Seed of the first run (each spp uses its own seed)."),
    backend: Backend = typer.Option(Backend.auto, help="Path tracer backend."),
    width: Optional[int] = Width,
    height: Optional[int] = Height,
    camera_index: int = CameraIndex,
):
    """Plot path-tracer RMSE against spp (log-log, ideal slope) with the rasterizer's error as a line."""
    import numpy as np

    from render import pathtrace, rasterize
    from render.image_io import write_json_atomic
    from render.metrics import convergence_plot

    _check_ssaa(ssaa)
    if reference is None and 16 * max_spp > MAX_SPP:
        raise typer.BadParameter(f"{max_spp}: our own reference would take 16 x {max_spp} spp, above the path "
                                 f"tracer's {MAX_SPP}; expected at most {MAX_SPP // 16}, or pass --reference",
                                 param_hint="--max-spp")
    outputs = ((out_path, "--out", (".png",)), (json_out, "--json"))
    check_outputs(*outputs, inputs=((reference, "--reference's input"),))
    s = _load(scene, seed, outputs)
    cam = _camera_for(s, width, height, camera_index)
    ref = _reference(reference, cam, linear_metrics_only=True)
    ref_note = reference.name if reference else ""
    if ref is None:
        ref_spp = 16 * max_spp
        out.print(f"rendering our own reference at {ref_spp} spp (pass --reference to skip)")
        ref = pathtrace(s, cam, spp=ref_spp, max_depth=max_depth, seed=seed + 1_000_000, backend=backend.value,
                        progress=True).rgb
        ref_note = f"path tracer, {ref_spp} spp"
    rmse = lambda img: float(np.sqrt(np.mean((img.astype(np.float64) - ref) ** 2)))  # noqa: E731
    spps = [1 << k for k in range(max_spp.bit_length()) if 1 << k < max_spp] + [max_spp]
    errors = []
    for k, n in enumerate(spps):
        errors.append(rmse(pathtrace(s, cam, spp=n, max_depth=max_depth, seed=seed + k, backend=backend.value).rgb))
        out.print(f"{n:6d} spp  RMSE {errors[-1]:.5f}")
    raster_error = rmse(rasterize(s, cam, ssaa=ssaa).rgb)
    out.print(f"raster   RMSE {raster_error:.5f}")
    convergence_plot(spps, errors, raster_error, out_path, title=f"{scene}, {cam.width}x{cam.height}, reference: {ref_note}")
    if json_out:
        write_json_atomic(json_out, {"scene": scene, "reference": ref_note, "spp": spps, "rmse": errors,
                                     "raster_rmse": raster_error, "raster_ssaa": ssaa, "max_depth": max_depth})
    out.print(f"wrote {out_path}" + (f" and {json_out}" if json_out else ""))


def _check_ssaa(ssaa: int) -> None:
    if ssaa not in (1, 2, 4):
        raise typer.BadParameter(f"{ssaa}; expected 1, 2 or 4", param_hint="--ssaa")


# --- dataset --------------------------------------------------------------------------------------
dataset_app = typer.Typer(no_args_is_help=True, help="Generate, verify, merge and show datasets for the neural renderer.")
app.add_typer(dataset_app, name="dataset", help="Datasets for the neural renderer (generate, verify, merge, show).",
              short_help="Generate, verify, merge and show datasets.")


@dataset_app.command("generate", short_help="Render a dataset into checksummed, resumable shards.")
def dataset_generate(
    family: str = typer.Argument(..., help="Scene family: rooms_ring, shepard_metzler, cornell_box."),
    out_dir: Path = typer.Option(..., "--out", help="Dataset folder (created; an interrupted run resumes in it)."),
    scenes: int = typer.Option(1000, help="Number of scenes N."),
    views: int = typer.Option(10, help="Views per scene V."),
    size: int = typer.Option(64, help="Image width and height in pixels."),
    renderer: DatasetRenderer = typer.Option(DatasetRenderer.raster, help="raster, path, or both (stores both images "
                                             "of every view)."),
    spp: int = typer.Option(64, min=1, help="Path tracer samples per pixel."),
    max_depth: int = typer.Option(8, min=-1, help="Path tracer path segments."),
    ssaa: int = typer.Option(1, help="Rasterizer supersampling per axis (1, 2, 4)."),
    seed: int = typer.Option(0, min=0, help="Seed: shards depend only on (seed, shard index)."),
    shard_size: int = typer.Option(100, help="Scenes per shard."),
    workers: int = typer.Option(0, min=0, help="Processes rendering shards in parallel; 0: one per core for the rasterizer, "
                                "one for the path tracer (which already uses every core)."),
    shard_index: int = typer.Option(0, min=0, help="This process's share: shards j with j % num_shards == shard_index."),
    num_shards: int = typer.Option(1, min=1, help="How many processes/machines share the work (join with `dataset merge`)."),
):
    """Render a dataset of scenes x views into checksummed, resumable shards."""
    from concurrent.futures.process import BrokenProcessPool

    from render.dataset import DatasetConfig, generate

    check_out(out_dir, "--out", folder=True)
    cfg = DatasetConfig(family, scenes, views, size, renderer.value, spp, max_depth, ssaa, seed, shard_size)
    try:
        m = generate(cfg, out_dir, workers=workers, shard_index=shard_index, num_shards=num_shards)
    except KeyboardInterrupt:
        err.print(f"interrupted: the finished shards are kept in {out_dir}; run the same command again to resume")
        raise typer.Exit(130) from None
    except BrokenProcessPool:
        err.print(f"error: a worker process died (killed, or out of memory); the finished shards are kept in "
                  f"{out_dir}: run the same command again to resume (--workers 1 uses the least memory)")
        raise typer.Exit(1) from None
    n = sum(min(cfg.scenes, (int(j) + 1) * cfg.shard_size) - int(j) * cfg.shard_size for j in m["shards"])
    part = ("" if num_shards == 1 else f" (part {shard_index} of {num_shards}; "
            + ("every part is done: manifest.json written)" if m.get("merged") else
               "the last part to finish writes manifest.json)"))
    out.print(f"{out_dir}: {n} scenes x {views} views in {len(m['shards'])} shard(s), {m['seconds']:.1f}s{part}")


@dataset_app.command("verify", short_help="Recompute checksums; name bad or missing shards.")
def dataset_verify(data: Path = typer.Argument(..., help="Dataset folder.")):
    """Recompute every shard's checksums and name any bad or missing shard."""
    from render.dataset import verify
    from render.shards import read_manifest

    problems = verify(data)
    unfinished = [p for p in problems if p.endswith((": not made yet", ": whole, but not in manifest.json yet"))]
    for p in problems:
        if p not in unfinished:
            err.print(f"bad: {p}")
    if len(unfinished) > 6:  # an interrupted run: name a few, count the rest
        unfinished = unfinished[:3] + [f"... and {len(unfinished) - 3} more shards not listed"]
    for p in unfinished:
        err.print(f"unfinished: {p}")
    m = read_manifest(data)
    listed, total = len(m.get("shards", {})), m["num_shards"]
    if listed < total:
        err.print(f"incomplete: manifest.json lists {listed} of {total} shards; run the same `trirender dataset "
                  "generate` command again to finish (after a distributed run, `trirender dataset merge`)")
    if problems:
        raise typer.Exit(1)
    out.print(f"{data}: all shards verified")


@dataset_app.command("merge")
def dataset_merge(data: Path = typer.Argument(..., help="Dataset folder written by several --shard-index runs.")):
    """Join the manifests of a distributed run into one manifest.json."""
    from render.dataset import merge

    m = merge(data)
    out.print(f"{data}: manifest.json lists {len(m['shards'])} shards")


@dataset_app.command("show", short_help="Write a contact sheet: a row of views per scene.")
def dataset_show(data: Path = typer.Argument(..., help="Dataset folder."),
                 scenes: int = typer.Option(8, min=1, help="Rows (scenes) on the sheet."),
                 out_path: Path = typer.Option(Path("sheet.png"), "--out", help="PNG to write."),
                 path_images: bool = typer.Option(False, "--path-images", help="Show the path-traced images of a 'both' dataset.")):
    """Write a contact sheet: one row per scene, its views in order, viewpoints under each."""
    from render.dataset import contact_sheet

    check_out(out_path, "--out", (".png",))
    contact_sheet(data, scenes, out_path, "images_path" if path_images else "images")
    out.print(f"wrote {out_path}")


# --- bench ----------------------------------------------------------------------------------------
BENCHES = ("pathtracer", "raster", "dataset", "train")


@app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             short_help="Run a benchmark of bench/ (a table and JSON).")
def bench_cmd(ctx: typer.Context,
              name: str = typer.Argument(..., help="pathtracer, raster, dataset or train.")):
    """Run a benchmark of bench/ (prints a table, saves JSON with the machine, versions and settings);
    options after NAME go to the script (trirender bench pathtracer --backend cpu; its own options:
    trirender bench pathtracer -- --help)."""
    import importlib

    if name not in BENCHES:
        raise typer.BadParameter(f"unknown benchmark {name!r}; expected one of: {', '.join(BENCHES)}", param_hint="NAME")
    module = importlib.import_module(f"bench.{name}")
    argv0 = sys.argv[0]
    sys.argv[0] = f"trirender bench {name}"  # the script's argparse names itself by it (usage, errors)
    try:
        module.main(list(ctx.args))
    finally:
        sys.argv[0] = argv0


from .cli_neural import register as _register_neural  # noqa: E402

_register_neural(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turning refusals of bad input into a short message and exit 2."""
    from render.errors import RenderError, SceneError
    from render.shards import ShardError

    import warnings

    # our warnings (degenerate triangles dropped, an empty frame) as one line each, without the
    # source line Python's default format prints under them
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.print(
        Text(f"warning: {message}"))
    try:
        rc = app(args=argv, prog_name="trirender", standalone_mode=False)
        if isinstance(rc, int) and rc:  # a typer.Exit(code) inside a command
            sys.exit(rc)
    except (SceneError, RenderError, ShardError) as exc:
        err.print(Text("error:", style="bold red"), str(exc))
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors (bad option values, missing arguments)
        show = getattr(exc, "show", None)
        if show is None:
            raise
        message = getattr(exc, "message", None)
        if isinstance(message, str) and message.startswith("Value error, "):  # pydantic's prefix, via typer
            exc.message = message[len("Value error, "):]
        show()
        sys.exit(getattr(exc, "exit_code", 2))

if __name__ == "__main__":
    main()
