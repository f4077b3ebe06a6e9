"""The console script as a user runs it (a subprocess), plus in-process calls for speed."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from render import load_toml
from render.image_io import read_image, write_exr

from helpers import same_arrays, sigint_as_from_a_terminal


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "trirender", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_verb_with_one_line():
    res = subprocess.run([sys.executable, "-m", "trirender", "--help"], capture_output=True, text=True, check=False,
                         env={**os.environ, "COLUMNS": "80"})
    assert res.returncode == 0
    commands = res.stdout.split("Commands:")[1].strip().splitlines()
    verbs = [line.split()[0] for line in commands if line.strip()]
    # DESIGN.md's verbs and the comparison plot, in the order of the work
    assert verbs == ["scene", "render", "compare", "convergence", "dataset", "train", "eval", "novel", "bench"]
    assert all(len(line.split()) > 1 for line in commands)  # each with its line of help
    for group in ("scene", "dataset"):  # and every line whole on an 80-column terminal (click cuts with "...")
        sub = subprocess.run([sys.executable, "-m", "trirender", group, "--help"], capture_output=True, text=True,
                             check=False, env={**os.environ, "COLUMNS": "80"})
        commands += sub.stdout.split("Commands:")[1].strip().splitlines()
    assert not [line for line in commands if line.rstrip().endswith("...")], commands


def test_scene_info_of_builtin_and_file(tmp_path):
    res = run("scene", "info", "cornell_box", "--json")
    assert res.returncode == 0, res.stderr
    import json

    info = json.loads(res.stdout)
    assert info["triangles"] == 36 and info["materials"]["light"] == "emitter"
    res = run("scene", "info", "cornell_box")
    assert "triangles" in res.stdout and "36" in res.stdout
    # and a scene file: a TOML written by scene generate, and a GLB mesh
    assert run("scene", "generate", "cornell_box", "--out", str(tmp_path / "box.toml")).returncode == 0
    res = run("scene", "info", str(tmp_path / "box.toml"), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["triangles"] == 36, res.stderr
    trimesh.creation.icosphere(subdivisions=1).export(tmp_path / "ball.glb")
    res = run("scene", "info", str(tmp_path / "ball.glb"), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["triangles"] == 80, res.stderr


def test_bench_verb_runs_a_bench_script_and_saves_its_json(tmp_path):
    out = tmp_path / "bench.json"
    res = run("bench", "dataset", "--renderers", "path", "--path-scenes", "1", "--views", "1", "--size", "8",
              "--spp", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    import json

    doc = json.loads(out.read_text())
    assert doc["bench"] == "dataset" and doc["machine"]["cores"] >= 1 and doc["settings"]["size"] == 8
    (row,) = doc["results"]["rows"]
    assert row["what"].startswith("generate path 1 spp") and row["views"] == 1 and row["rate"] > 0
    res = run("bench", "nope")
    assert res.returncode == 2 and "expected one of: pathtracer, raster, dataset, train" in " ".join(res.stderr.split())
    res = run("bench", "raster", "--", "--help")  # the script's own options, under the name that ran it
    assert res.returncode == 0 and res.stdout.startswith("usage: trirender bench raster [-h]"), res.stdout


def test_scene_generate_then_info_round_trips(tmp_path):
    out = tmp_path / "room.toml"
    res = run("scene", "generate", "rooms_ring", "--seed", "4", "--out", str(out))
    assert res.returncode == 0, res.stderr
    import render

    assert same_arrays(load_toml(out), render.make_scene("rooms_ring", seed=4))


def test_scene_convert_glb(tmp_path):
    box = trimesh.creation.box(extents=(1, 1, 1))
    box.export(tmp_path / "box.glb")
    res = run("scene", "convert", str(tmp_path / "box.glb"), "--out", str(tmp_path / "out" / "box.toml"))
    assert res.returncode == 0, res.stderr
    assert "(12 triangles, 1 object)" in res.stdout, res.stdout
    s = load_toml(tmp_path / "out" / "box.toml")
    assert s.num_triangles == 12 and s.lights and (s.camera.width, s.camera.height) == (512, 512)
    assert "../box.glb" in (tmp_path / "out" / "box.toml").read_text()


@pytest.mark.parametrize("args,words", [
    (("scene", "info", "missing.toml"), "missing.toml"),
    (("scene", "info", "bad.toml"), "bad.toml: objects[0].material: unknown material"),
    (("scene", "generate", "nope", "--out", "x.toml"), "unknown family"),
    (("render", "bad.toml", "--out", "x.png"), "bad.toml: objects[0].material"),
    (("render", "cornell_box", "--aov", "speed"), "unknown AOV"),
    # output paths are checked before any work: under a file, in a place that cannot be written,
    # with an extension the command does not write
    (("render", "cornell_box", "--renderer", "path", "--out", "afile/x.png"), "afile is a file"),
    (("render", "cornell_box", "--stats", "afile/s.json"), "--stats"),
    (("render", "cornell_box", "--out", "/proc/x.png"), "cannot write in /proc"),
    (("render", "cornell_box", "--out", "x.jpg"), "expected a .png or .exr file name"),
    (("compare", "cornell_box", "--out", "c.exr"), "expected a .png file name"),
    (("scene", "generate", "rooms_ring", "--out", "q.png"), "expected a .toml file name"),
    (("dataset", "generate", "rooms_ring", "--out", "afile"), "afile is a file; expected a folder"),
    (("dataset", "show", "afile", "--out", "sheet.jpg"), "expected a .png file name"),
    (("train", ".", "--out", "afile/run"), "afile is a file"),
    (("novel", ".", "--scene", "cornell_box", "--out", "o.mp4"), "expected a .gif file name"),
    # numbers out of range, refused before any work
    (("render", "cornell_box", "--seed", "-1"), "--seed"),
    (("render", "cornell_box", "--backend", "tpu"), "'--backend': 'tpu' is not one of 'auto', 'cpu', 'gpu'."),
    (("render", "cornell_box", "--width", "0"), "--width"),
    (("render", "cornell_box", "--max-depth", "-2"), "--max-depth"),
    (("convergence", "cornell_box", "--ssaa", "3"), "--ssaa"),
    (("compare", "cornell_box", "--context", "0"), "--context"),
    (("dataset", "show", ".", "--scenes", "0"), "--scenes"),
    (("dataset", "generate", "rooms_ring", "--workers", "-1", "--out", "d"), "--workers"),
    (("dataset", "generate", "rooms_ring", "--renderer", "gpu", "--out", "d"), "'gpu' is not one of 'raster', 'path', 'both'"),
    (("train", ".", "--out", "run", "--steps", "0"), "--steps"),
    (("train", ".", "--out", "run", "--minutes", "-1"), "--minutes"),
    (("eval", "run", "--data", ".", "--scenes", "0"), "--scenes"),
    (("render", "cornell_box", "--width", "100000"), "--width"),  # the scene format's 16384
    (("render", "cornell_box", "--renderer", "path", "--time", "-1"), "--time"),
    (("render", "cornell_box", "--renderer", "path", "--spp", "10000000000"), "--spp"),
    (("render", "cornell_box", "--out", "same.png", "--stats", "same.png"), "same.png is also --out's file"),
    (("compare", "cornell_box", "--out", "c.png", "--json", "c.png"), "c.png is also --out's file"),
    # outputs never overwrite an input, nor a file another output writes, AOVs included
    (("compare", "cornell_box", "--reference", "r.png", "--out", "r.png"), "r.png is also --reference's input"),
    (("scene", "convert", "bad.toml", "--out", "bad.toml"), "bad.toml is also SRC's input"),
    (("render", "cornell_box", "--out", "y.png", "--aov", "depth", "--stats", "y.depth.exr"),
     "y.depth.exr is also --stats's file"),
    (("render", "cornell_box", "--out", "d.png", "--aov", "depth"), "d.depth.exr is a folder"),
    # a reference that is not a usable image
    (("compare", "cornell_box", "--reference", "afile"), "--reference afile: cannot read it as an image"),
    (("compare", "cornell_box", "--width", "4", "--height", "4", "--reference", "nan.exr"),
     "1 pixel(s) are not finite"),
    (("convergence", "cornell_box", "--width", "4", "--height", "4", "--reference", "grey.exr"),
     "1 channel(s); expected an RGB image"),
    # an 8-bit reference cannot hold radiance above 1: convergence plots linear RMSE only
    (("convergence", "cornell_box", "--width", "4", "--height", "4", "--reference", "r8.png"),
     ("--reference r8.png: a .png image holds display values in [0, 1] (sRGB-decoded), not radiance above 1; "
      "expected a linear EXR, since convergence measures linear RMSE")),
    (("compare", "cornell_box", "--spp", "99999999999"), "--spp"),
    (("compare", "cornell_box", "--camera", "1"), "scene has 1 camera(s); expected 0..0"),
    (("compare", "cornell_box", "--neural", "badrun"), "badrun/checkpoint.pt: cannot be read"),
    (("convergence", "cornell_box", "--camera", "-1"), "--camera"),
    (("convergence", "cornell_box", "--max-spp", "200000000"), "expected at most 134217727, or pass --reference"),
    (("train", ".", "--out", "run", "--device", "gpu"), "device 'gpu'; expected auto, cpu, cuda or cuda:N"),
    (("eval", "run", "--data", ".", "--device", "mps"), "device 'mps'; expected"),
    # an unreadable texture: one line (imageio's own message runs on for four, with install advice)
    (("scene", "info", "badtex.toml"), "materials.white.texture: cannot read image"),
    # messages keep their brackets (no console markup), whatever the file is called
    (("scene", "info", "[x]/empty.toml"), "[x]/empty.toml: materials: expected a table of named materials, "
                                          "e.g. [materials.white]"),
])
def test_bad_input_is_one_or_two_lines_and_non_zero(tmp_path, args, words, cli_in_process):
    (tmp_path / "bad.toml").write_text(
        '[camera]\nposition = [0.0, 0.0, 3.0]\nlook_at = [0.0, 0.0, 0.0]\n'
        '[materials.white]\ntype = "diffuse"\n[[objects]]\nshape = "sphere"\nmaterial = "wite"\n')
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "badtex.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "badtex.toml").write_text(
        '[camera]\nposition = [0.0, 0.0, 3.0]\nlook_at = [0.0, 0.0, 0.0]\n'
        '[materials.white]\ntype = "diffuse"\ntexture = "badtex.png"\n[[objects]]\nshape = "sphere"\nmaterial = "white"\n')
    (tmp_path / "[x]").mkdir()
    (tmp_path / "d.depth.exr").mkdir()
    (tmp_path / "badrun").mkdir()
    (tmp_path / "badrun" / "config.json").write_text("{}")
    (tmp_path / "badrun" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    nan = np.zeros((4, 4, 3), np.float32)
    nan[1, 2, 0] = np.nan
    write_exr(tmp_path / "nan.exr", nan)
    write_exr(tmp_path / "grey.exr", np.zeros((4, 4), np.float32))
    iio.imwrite(tmp_path / "r8.png", np.full((4, 4, 3), 128, np.uint8))
    (tmp_path / "[x]" / "empty.toml").write_text('[camera]\nposition = [0.0, 0.0, 3.0]\nlook_at = [0.0, 0.0, 0.0]\n')
    res = cli_in_process(*args, cwd=tmp_path)  # main() as the console script calls it (a subprocess each: 40 s)
    assert res.returncode == 2, (res.returncode, res.stderr)
    text = " ".join(res.stderr.split())
    assert words in text, res.stderr
    assert "Traceback" not in res.stderr
    if res.stderr.startswith("error:"):  # our own refusals: one line
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    else:  # the parser's: usage, a hint, the error in a box of a few lines
        assert "Invalid value" in text or "Missing" in text, res.stderr


def test_a_warning_is_one_line(tmp_path):
    # a dropped degenerate triangle is worth a word, not Python's warning format with a source line
    trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], faces=[[0, 1, 2], [3, 3, 3]],
                    process=False).export(tmp_path / "d.ply")
    (tmp_path / "d.toml").write_text(
        '[camera]\nposition = [0.0, 0.0, 3.0]\nlook_at = [0.0, 0.0, 0.0]\n[materials.white]\ntype = "diffuse"\n'
        '[[objects]]\nshape = "mesh"\nfile = "d.ply"\nmaterial = "white"\n')
    res = run("scene", "info", "d.toml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines() == ["warning: d.toml: objects[0]: dropped 1 degenerate triangle(s)"], res.stderr


def test_scene_info_names_the_environment(tmp_path):
    write_exr(tmp_path / "sky.exr", np.ones((4, 8, 3), np.float32))
    (tmp_path / "e.toml").write_text(
        '[camera]\nposition = [0.0, 0.0, 3.0]\nlook_at = [0.0, 0.0, 0.0]\n[materials.white]\ntype = "diffuse"\n'
        '[[objects]]\nshape = "sphere"\nmaterial = "white"\n[environment]\nfile = "sky.exr"\nradiance = [2.0, 2.0, 2.0]\n')
    res = subprocess.run([sys.executable, "-m", "trirender", "scene", "info", "e.toml"], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "COLUMNS": "400"})  # one line per row
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if "environment" in line)
    assert f"map {(tmp_path / 'sky.exr').resolve()} times (2, 2, 2)" in row and "[" not in row, row  # not a Python list
    res = run("scene", "info", "rooms_ring", cwd=tmp_path)
    assert "constant radiance (0.3, 0.3, 0.3)" in res.stdout, res.stdout


def test_outputs_never_overwrite_a_file_the_scene_reads(tmp_path):
    # the scene's own TOML, its texture, its environment map and a mesh it loads (and, for compare
    # --neural, the run's files) are inputs: an output naming one is refused and the file is kept
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "tex.png", np.full((4, 4, 3), 128, np.uint8))
    write_exr(tmp_path / "sky.exr", np.ones((4, 8, 3), np.float32))
    trimesh.creation.box().export(tmp_path / "box.ply")
    (tmp_path / "s.toml").write_text(
        '[camera]\nposition = [0.0, 0.0, 3.0]\nlook_at = [0.0, 0.0, 0.0]\nwidth = 8\nheight = 8\n'
        '[materials.t]\ntype = "diffuse"\ntexture = "tex.png"\n[environment]\nfile = "sky.exr"\n'
        '[[objects]]\nshape = "mesh"\nfile = "box.ply"\nmaterial = "t"\n')
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for args in (("render", "s.toml", "--stats", "s.toml"), ("render", "s.toml", "--out", "tex.png"),
                 ("render", "s.toml", "--renderer", "path", "--out", "sky.exr"),
                 ("render", "s.toml", "--out", "x.png", "--stats", "box.ply"),
                 ("compare", "s.toml", "--json", "s.toml"), ("convergence", "s.toml", "--json", "sky.exr"),
                 ("compare", "s.toml", "--neural", "run", "--json", "run/config.json")):
        res = run(*args, cwd=tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr, (args, res.stderr)
        assert f"{args[-1]} is also" in " ".join(res.stderr.split()), (args, res.stderr)
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "x.png").exists()


def test_ctrl_c_ends_a_path_render_with_the_passes_done_written(tmp_path):
    # a long progressive render stopped by Ctrl-C keeps its work (as --time would): the image of the
    # whole passes done is written, the line says so, and the exit status is 130
    import signal
    import time

    log = tmp_path / "err.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "trirender", "render", "cornell_box", "--renderer", "path",
                                 "--spp", "1000000", "--width", "32", "--height", "32", "--out", "long.exr"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                preexec_fn=sigint_as_from_a_terminal)
        deadline = time.monotonic() + 300
        while "/1000000" not in log.read_text() and time.monotonic() < deadline:  # the bar has started
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, (stdout, log.read_text())
    assert "Ctrl-C stopped it at" in stdout and "of 1000000 spp" in stdout, stdout
    spp = int(stdout.split("Ctrl-C stopped it at ")[1].split()[0])
    img = read_image(tmp_path / "long.exr")
    assert 0 < spp < 1000000 and img.shape == (32, 32, 3)
    # the image is the mean of the samples taken (not their sum, nor diluted by passes not done)
    assert np.allclose(img.reshape(-1, 3).mean(0), (0.24016, 0.14113, 0.05998), rtol=0.1), img.reshape(-1, 3).mean(0)


def test_path_render_prints_one_line_and_writes_its_stats(tmp_path):
    # stdout is ours alone (Taichi's banner and arch line go to stderr): scripts parse the one line
    res = run("render", "cornell_box", "--renderer", "path", "--spp", "2", "--width", "16", "--height", "16",
              "--out", "p.exr", "--aov", "id", "--stats", "s.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [res.stdout.strip()] and res.stdout.startswith("wrote p.exr, p.id.png, s.json")
    assert "Graphical python shell" not in res.stderr  # nor does the redirect switch on Taichi's notebook mode
    stats = json.loads((tmp_path / "s.json").read_text())
    for key in ("paths_per_second", "compile_seconds", "render_seconds", "backend", "device", "spp", "max_depth", "seed"):
        assert key in stats, key
    assert stats["backend"] == "cpu" and stats["spp"] == 2 and stats["paths_per_second"] > 0


def test_options_of_the_other_renderer_are_named_as_ignored(tmp_path):
    res = run("render", "cornell_box", "--width", "8", "--height", "8", "--spp", "4", "--time", "2", "--out", "a.png",
              cwd=tmp_path)
    assert res.returncode == 0 and "note: --spp, --time do not apply to the raster renderer" in res.stderr, res.stderr
    res = run("render", "cornell_box", "--width", "8", "--height", "8", "--out", "a.png", cwd=tmp_path)
    assert res.returncode == 0 and "note:" not in res.stderr, res.stderr
    res = run("render", "cornell_box", "--renderer", "path", "--spp", "1", "--width", "8", "--height", "8",
              "--no-shadows", "--out", "a.png", cwd=tmp_path)
    assert res.returncode == 0 and "note: --no-shadows does not apply to the path renderer" in res.stderr, res.stderr


def test_compare_renders_the_chosen_camera(tmp_path):
    (tmp_path / "two.toml").write_text(
        '[[cameras]]\nposition = [0.0, 0.0, 3.0]\nlook_at = [0.0, 0.0, 0.0]\nwidth = 8\nheight = 8\n'
        '[[cameras]]\nposition = [3.0, 0.0, 0.0]\nlook_at = [0.0, 0.0, 0.0]\nwidth = 12\nheight = 10\n'
        '[materials.white]\ntype = "diffuse"\n[[objects]]\nshape = "sphere"\nmaterial = "white"\n'
        '[environment]\nradiance = [1.0, 1.0, 1.0]\n')
    iio.imwrite(tmp_path / "r8.png", np.full((10, 12, 3), 128, np.uint8))
    res = run("compare", "two.toml", "--camera", "1", "--spp", "1", "--json", "c.json", "--reference", "r8.png",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    c = json.loads((tmp_path / "c.json").read_text())
    assert (c["width"], c["height"]) == (12, 10)
    # an 8-bit reference is scored, with a note that its linear metrics undercount radiance above 1
    assert "note: --reference r8.png: a .png image holds display values in [0, 1]" in res.stderr, res.stderr


def test_aov_option_takes_a_list_or_repeats(tmp_path):
    # a repeated --aov used to keep only the last one, silently
    res = run("render", "cornell_box", "--width", "16", "--height", "16", "--aov", "depth", "--aov", "normal,id",
              "--out", str(tmp_path / "x.png"))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.depth.exr", "x.id.png", "x.normal.exr", "x.png"]


def test_the_cli_limits_are_the_renderers():
    # written out in the CLI so that it starts without importing render
    from render.pathtracer import MAX_SPP
    from render.schema import MAX_IMAGE_SIDE
    from trirender import cli

    assert (cli.MAX_SIDE, cli.MAX_SPP) == (MAX_IMAGE_SIDE, MAX_SPP)
    res = subprocess.run([sys.executable, "-c", "import sys, trirender.cli; print('render' in sys.modules)"],
                         capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr
