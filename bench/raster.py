"""Rasterizer benchmark: numba rasterizer vs OpenGL (moderngl on EGL, Mesa llvmpipe) on the CPU.

    python bench/raster.py [--quick] [--out bench/results/raster.json]

(a) 64x64 views of small scenes (rooms_ring with 5 objects, ~5k triangles), rendered in batches:
    views per second. (b) one 512x512 view of ~100k triangles: frames per second.
(c) the same views through moderngl when it is installed (the `bench` extra; Debian packages
    libegl1, libegl-mesa0, libgl1-mesa-dri), doing the same work: depth test, Lambert shading of the
    scene's directional light plus ambient, read back to numpy. Reports the speed ratio and the
    fraction of pixels whose triangle id differs between the two.
Cold compile time (empty numba cache, in a subprocess) and warm start (cache loaded) are reported
separately. Prints a table and writes JSON with the machine, versions and settings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import render  # noqa: E402
from render import families  # noqa: E402
from render.rasterizer import rasterize, rasterize_batch, visibility  # noqa: E402


# --- scenes -------------------------------------------------------------------------------------
# Finer tessellation than rooms_ring's defaults, so 5 objects make ~5k triangles (issue 3's workload).
FINE = {"sphere": {"subdivisions": 3}, "cylinder": {"segments": 160}, "cone": {"segments": 240},
        "capsule": {"segments": 64, "rings": 10}, "torus": {"segments": 48, "rings": 24}}


def small_scenes(n_scenes: int, views_per_scene: int, size: int = 64):
    """rooms_ring rooms with 5 finely tessellated objects each (~5k triangles) and ring cameras."""
    pairs = []
    rng = np.random.default_rng(0)
    for s in range(n_scenes):
        desc = families.rooms_ring_description(np.random.default_rng(s), min_objects=5, max_objects=5,
                                               width=size, height=size)
        for obj in desc["objects"]:
            if obj.get("subdivisions") != 0:  # keep the flat icosahedron flat
                obj.update(FINE.get(obj["shape"], {}))
        scene = render.scene_from_dict(desc, source=f"rooms_ring_fine[{s}]")
        for cam in families.rooms_ring_cameras(rng, views_per_scene, size, size):
            pairs.append((scene, cam))
    return pairs


def big_scene(size: int = 512):
    """~100k triangles: five subdivided spheres and a torus on a floor, lit by a directional light."""
    objects = [{"shape": "quad", "material": "floor", "size": [8.0, 8.0], "rotate": [-90.0, 0.0, 0.0]}]
    for k, x in enumerate((-2.4, -1.2, 0.0, 1.2, 2.4)):
        objects.append({"shape": "sphere", "radius": 0.55, "subdivisions": 5, "material": f"m{k}",
                        "translate": [x, 0.55, -0.3 * k]})
    objects.append({"shape": "torus", "major_radius": 0.8, "minor_radius": 0.25, "segments": 96, "rings": 24,
                    "material": "m0", "translate": [0.0, 0.25, 1.6]})
    desc = {
        "camera": {"position": [0.0, 2.2, 5.5], "look_at": [0.0, 0.4, 0.0], "fov": 45.0, "width": size,
                   "height": size},
        "materials": {"floor": {"type": "diffuse", "albedo": [0.6, 0.6, 0.6]},
                      **{f"m{k}": {"type": "diffuse", "albedo": [0.2 + 0.15 * k, 0.5, 0.8 - 0.15 * k]}
                         for k in range(5)}},
        "objects": objects,
        "lights": [{"type": "directional", "direction": [-0.4, -1.0, -0.5], "irradiance": [3.0, 3.0, 3.0]}],
        "environment": {"radiance": [0.2, 0.2, 0.25]},
    }
    return render.scene_from_dict(desc)


# --- OpenGL reference (moderngl / EGL / llvmpipe) -------------------------------------------------
VS = """
#version 330
uniform mat4 mvp;
in vec3 in_pos;
in vec3 in_nrm;
in vec3 in_alb;
out vec3 v_nrm;
out vec3 v_alb;
void main() {
    gl_Position = mvp * vec4(in_pos, 1.0);
    v_nrm = in_nrm;
    v_alb = in_alb;
}
"""
FS = """
#version 330
uniform vec3 light_dir;   // direction the light travels
uniform vec3 irradiance;
uniform vec3 ambient;
in vec3 v_nrm;
in vec3 v_alb;
layout(location = 0) out vec4 out_rgb;
layout(location = 1) out int out_tri;
void main() {
    vec3 n = normalize(v_nrm);
    if (!gl_FrontFacing) n = -n;
    float c = max(dot(n, -light_dir), 0.0);
    out_rgb = vec4(v_alb * (irradiance * c / 3.14159265 + ambient), 1.0);
    out_tri = gl_PrimitiveID;
}
"""


class GLRenderer:
    """Renders (scene, camera) pairs with OpenGL: depth test, Lambert, read back rgb and triangle id."""

    def __init__(self, cull: bool = False):
        import moderngl

        self.mgl = moderngl
        self.ctx = moderngl.create_context(standalone=True, backend="egl")
        self.prog = self.ctx.program(vertex_shader=VS, fragment_shader=FS)
        self.cull = cull
        self.vaos = {}
        self.fbos = {}

    @property
    def info(self) -> dict:
        return {k: self.ctx.info[k] for k in ("GL_RENDERER", "GL_VERSION", "GL_VENDOR")}

    def _vao(self, scene):
        key = id(scene)
        if key not in self.vaos:
            alb = scene.material_arrays()["base"][scene.material_id]            # (T, 3)
            data = np.concatenate([scene.positions, scene.normals, np.repeat(alb[:, None], 3, 1)], -1)  # (T, 3, 9)
            vbo = self.ctx.buffer(np.ascontiguousarray(data, np.float32).tobytes())
            self.vaos[key] = (self.ctx.vertex_array(self.prog, [(vbo, "3f 3f 3f", "in_pos", "in_nrm", "in_alb")]),
                              scene)
        return self.vaos[key][0]

    def _fbo(self, w, h):
        if (w, h) not in self.fbos:
            self.fbos[(w, h)] = self.ctx.framebuffer(
                color_attachments=[self.ctx.renderbuffer((w, h), 4, dtype="f4"),
                                   self.ctx.renderbuffer((w, h), 1, dtype="i4")],
                depth_attachment=self.ctx.depth_renderbuffer((w, h)))
        return self.fbos[(w, h)]

    def render(self, scene, cam):
        """Returns rgb (H, W, 3) float32 and triangle id (H, W) int32, row 0 at the top."""
        vao = self._vao(scene)
        fbo = self._fbo(cam.width, cam.height)
        fbo.use()
        self.ctx.enable(self.mgl.DEPTH_TEST)
        if self.cull:
            self.ctx.enable(self.mgl.CULL_FACE)
        else:
            self.ctx.disable(self.mgl.CULL_FACE)
        mvp = cam.projection_matrix() @ cam.view_matrix()
        self.prog["mvp"].write(np.ascontiguousarray(mvp.T, np.float32).tobytes())   # column-major
        la = scene.light_arrays()
        self.prog["light_dir"].value = tuple(float(x) for x in la["direction"][0])
        self.prog["irradiance"].value = tuple(float(x) for x in la["power"][0])
        self.prog["ambient"].value = tuple(float(x) for x in scene.environment.radiance)
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        vao.render(self.mgl.TRIANGLES)
        w, h = cam.width, cam.height
        rgb = np.frombuffer(fbo.read(components=4, dtype="f4", attachment=0), np.float32).reshape(h, w, 4)
        tri = np.frombuffer(fbo.read(components=1, dtype="i4", attachment=1), np.int32).reshape(h, w)
        # The integer attachment clears to 0, a valid id: background is where depth stayed 1.
        covered = np.frombuffer(fbo.read(components=1, dtype="f4", attachment=-1), np.float32).reshape(h, w) < 1.0
        tri = np.where(covered, tri, -1)
        return rgb[::-1, :, :3], tri[::-1]


# --- helpers ------------------------------------------------------------------------------------
def timed(fn, repeats: int) -> float:
    """Best-of wall time of fn() in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def compile_times() -> dict:
    """Cold compile (fresh numba cache) and warm start (cache loaded), each in a new process."""
    code = ("import time; t=time.perf_counter(); import render; from render.rasterizer import rasterize; "
            "f=rasterize(render.cornell_box(width=8, height=8)); "
            "print(f.meta['compile_seconds'], time.perf_counter()-t)")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for name in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
            c, total = (float(x) for x in res.stdout.split()[-2:])
            out[f"{name}_compile_seconds"] = round(c, 3)
            out[f"{name}_process_seconds"] = round(total, 3)
    return out


def machine() -> dict:
    """bench.common's machine and versions, plus the OpenGL side's."""
    import numba

    from bench.common import machine as common_machine, versions

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = None
    return {**common_machine(), **versions("moderngl"), "numba_threading_layer": layer}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer views and repeats")
    from bench.common import RESULTS  # bench/results in a checkout, ./bench_results when installed

    ap.add_argument("--out", default=str(RESULTS / "raster.json"))
    ap.add_argument("--no-compile", action="store_true", help="skip the cold-compile subprocess")
    args = ap.parse_args(argv)
    n_scenes, per_scene, repeats = (4, 16, 2) if args.quick else (8, 32, 5)

    result = {"machine": machine(), "settings": {"small": {"size": 64, "scenes": n_scenes, "views_per_scene": per_scene,
                                                          "ssaa": 1, "shadows": False},
                                                "big": {"size": 512, "ssaa": 1, "shadows": False},
                                                "repeats": repeats,
                                                "timing": "best of interleaved rounds, wall clock"}}
    if not args.no_compile:
        result["compile"] = compile_times()

    small = small_scenes(n_scenes, per_scene)
    big = big_scene()
    tris_small = float(np.mean([s.num_triangles for s, _ in small[::per_scene]]))
    result["settings"]["small"]["triangles_mean"] = tris_small
    result["settings"]["big"]["triangles"] = big.num_triangles

    from render.rasterizer import warm_up

    warm_up()  # compile / load every kernel outside the timings (they otherwise compile at first use)
    rasterize(big, shadows=False)
    rasterize_batch(small[:2], shadows=False)
    import numba

    result["machine"]["numba_threading_layer"] = numba.threading_layer()
    gl = glc = None
    try:
        gl, glc = GLRenderer(cull=False), GLRenderer(cull=True)
        for r in (gl, glc):
            r.render(*small[0])
            r.render(big, big.camera)
    except Exception as err:  # moderngl missing or no EGL: the numba figures still stand
        gl = None
        result["opengl"] = {"available": False, "reason": f"{type(err).__name__}: {err}"}

    # Each round times every measure once, numba and OpenGL back to back, so both see the same
    # background load; each figure is the best round.
    work = {
        "small": (len(small), lambda: rasterize_batch(small, shadows=False)),
        "small_serial": (len(small), lambda: rasterize_batch(small, shadows=False, parallel=False)),
        "small_shadows": (len(small), lambda: rasterize_batch(small, shadows=True)),
        "big": (3, lambda: [rasterize(big, shadows=False) for _ in range(3)]),
        "big_shadows": (3, lambda: [rasterize(big, shadows=True) for _ in range(3)]),
    }
    if gl is not None:
        work.update({
            "gl_small": (len(small), lambda: [gl.render(s, c) for s, c in small]),
            "gl_big": (3, lambda: [gl.render(big, big.camera) for _ in range(3)]),
            "gl_big_cull": (3, lambda: [glc.render(big, big.camera) for _ in range(3)]),
        })
    best = {k: 0.0 for k in work}
    for _ in range(repeats):
        for k, (n, fn) in work.items():
            best[k] = max(best[k], n / timed(fn, 1))
    result["raster"] = {"small_views_per_s": best["small"], "small_views_per_s_serial": best["small_serial"],
                        "small_views_per_s_shadows": best["small_shadows"], "big_fps": best["big"],
                        "big_fps_shadows": best["big_shadows"]}
    rows = [("(a) 64x64 batch, views/s", best["small"]), ("(a) 64x64 serial, views/s", best["small_serial"]),
            ("(a) 64x64 batch + shadow maps, views/s", best["small_shadows"]),
            ("(b) 512x512 ~100k tris, fps", best["big"]), ("(b) 512x512 + shadow maps, fps", best["big_shadows"])]
    if gl is not None:
        # Triangle-id agreement over the first 64 small views and the big one.
        diff = total = 0
        for s, c in small[:64] + [(big, big.camera)]:
            ours, _ = visibility(s, c)
            _, theirs = gl.render(s, c)
            diff += int((ours != theirs).sum())
            total += ours.size
        ratio_small, ratio_big = best["small"] / best["gl_small"], best["big"] / best["gl_big"]
        result["opengl"] = {"available": True, **gl.info, "small_views_per_s": best["gl_small"],
                            "big_fps": best["gl_big"], "big_fps_backface_culling": best["gl_big_cull"],
                            "ratio_small": ratio_small, "ratio_big": ratio_big,
                            "id_differing_fraction": diff / total, "id_pixels_compared": total}
        rows += [("(c) llvmpipe 64x64, views/s", best["gl_small"]), ("(c) llvmpipe 512x512, fps", best["gl_big"]),
                 ("(c) llvmpipe 512x512 back-face culled, fps", best["gl_big_cull"]),
                 ("ratio 64x64 (target >= 5)", ratio_small), ("ratio 512x512 (target >= 3)", ratio_big),
                 ("triangle ids differing, fraction", diff / total)]
    if "compile" in result:
        rows += [("cold compile, s", result["compile"]["cold_compile_seconds"]),
                 ("warm start (cache load), s", result["compile"]["warm_compile_seconds"])]

    m = result["machine"]
    m["load_average_at_end"] = list(os.getloadavg())
    print(f"machine: {m['cpu']}, {m['cores']} cores; numba {m['numba']} ({m['numba_threading_layer']}); "
          f"small scenes ~{tris_small:.0f} tris, big {big.num_triangles} tris; "
          f"load average {m['load_average_at_start'][0]:.1f} at start, {m['load_average_at_end'][0]:.1f} at end")
    if gl is not None:
        print(f"OpenGL: {result['opengl']['GL_RENDERER']}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    for name, v in rows:
        print(f"{name:<{width}}  {v:.4g}")
    from render.image_io import write_json_atomic

    write_json_atomic(args.out, result)
    print(f"saved {args.out}")
    return result


if __name__ == "__main__":
    main()
