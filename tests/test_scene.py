import math
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

import render
from render import load_scene, load_toml, save_scene, scene_from_dict
from render.writer import scene_to_toml

from helpers import minimal_description, same_arrays, sigint_as_from_a_terminal, write_ply_without_normals

DESIGN_MINIMAL_TOML = """
[camera]
position = [0.0, 1.0, 3.4]
look_at  = [0.0, 1.0, 0.0]
up       = [0.0, 1.0, 0.0]
fov      = 39.3          # vertical field of view, degrees
width    = 256
height   = 256

[materials.white]
type   = "diffuse"       # diffuse | metal | glass | emitter
albedo = [0.73, 0.73, 0.73]

[materials.lamp]
type     = "emitter"
radiance = [17.0, 12.0, 4.0]
albedo   = [0.0, 0.0, 0.0]   # optional: the emitting surface also reflects diffusely

[[objects]]
shape     = "mesh"       # mesh | sphere | box | quad | cylinder | cone
file      = "meshes/bunny.ply"
material  = "white"
translate = [0.0, 0.0, 0.0]
rotate    = [0.0, 30.0, 0.0]   # Euler XYZ, degrees
scale     = 1.0

[[lights]]
type      = "point"      # point | directional ; area lights are emitter objects
position  = [0.0, 1.9, 0.0]
intensity = [5.0, 5.0, 5.0]

[environment]
radiance = [0.0, 0.0, 0.0]    # constant; or  file = "sky.exr"
"""


@pytest.fixture
def design_scene_file(tmp_path):
    (tmp_path / "meshes").mkdir()
    write_ply_without_normals(tmp_path / "meshes" / "bunny.ply", trimesh.creation.icosphere(2))
    path = tmp_path / "scene.toml"
    path.write_text(DESIGN_MINIMAL_TOML)
    return path


def test_design_minimal_toml_loads(design_scene_file):
    s = load_toml(design_scene_file)
    assert s.num_triangles == 320
    assert s.positions.dtype == np.float32 and s.positions.shape == (320, 3, 3)
    assert s.normals.shape == (320, 3, 3) and s.uvs.shape == (320, 3, 2)
    assert s.material_id.dtype == np.int32 and s.object_id.dtype == np.int32
    assert [m.name for m in s.materials] == ["white", "lamp"]
    assert s.lights[0].type == "point" and s.lights[0].intensity == (5.0, 5.0, 5.0)
    assert s.camera.fov == pytest.approx(39.3) and (s.camera.width, s.camera.height) == (256, 256)
    # rotated 30 degrees about y: the icosphere is symmetric, so check a transformed vertex instead
    ico = trimesh.creation.icosphere(2)
    r = np.radians(30.0)
    ry = np.array([[np.cos(r), 0, np.sin(r)], [0, 1, 0], [-np.sin(r), 0, np.cos(r)]])
    np.testing.assert_allclose(s.positions[0], ico.vertices[ico.faces[0]] @ ry.T, atol=1e-6)


def test_scene_is_frozen(design_scene_file):
    s = load_toml(design_scene_file)
    with pytest.raises(ValueError):
        s.positions[0, 0, 0] = 1.0
    with pytest.raises(AttributeError):
        s.positions = None


def test_mesh_without_normals_is_flat_and_with_normals_uses_them(tmp_path):
    box = trimesh.creation.box()
    write_ply_without_normals(tmp_path / "flat.ply", box)
    (tmp_path / "smooth.obj").write_text(trimesh.exchange.obj.export_obj(box, include_normals=True))
    for name, flat in (("flat.ply", True), ("smooth.obj", False)):
        d = minimal_description()
        d["objects"] = [{"shape": "mesh", "file": name, "material": "white"}]
        s = scene_from_dict(d, base_dir=tmp_path)
        face = s.geometric_normals()
        if flat:
            np.testing.assert_allclose(s.normals, np.repeat(face[:, None], 3, 1), atol=1e-6)
        else:
            # the OBJ carries box-corner normals (1, 1, 1)/sqrt(3): used as they are, not flattened
            np.testing.assert_allclose(np.abs(s.normals), 1 / math.sqrt(3), atol=1e-6)
        # no vertex merging and no reordering: triangle t is the file's face t
        np.testing.assert_allclose(s.positions, box.vertices[box.faces], atol=1e-6)


@pytest.mark.parametrize("shape,extra", [
    ("sphere", {"radius": 0.7, "subdivisions": 2}), ("box", {"size": [1.0, 2.0, 3.0]}), ("quad", {"size": [2.0, 1.0]}),
    ("cylinder", {"radius": 0.5, "height": 1.5}), ("cone", {"radius": 0.5, "height": 1.5}),
    ("capsule", {"radius": 0.3, "height": 1.5}), ("torus", {"major_radius": 1.0, "minor_radius": 0.3}),
])
def test_shapes_are_consistent_triangles(shape, extra):
    d = minimal_description()
    d["objects"] = [{"shape": shape, "material": "white", "rotate": [10.0, 20.0, 30.0], "translate": [0.1, 0.2, 0.3],
                     "scale": [1.0, 2.0, 0.5], **extra}]
    s = scene_from_dict(d)
    np.testing.assert_allclose(np.linalg.norm(s.normals, axis=-1), 1.0, atol=1e-5)
    # shading normals lie on the front side of their (counter-clockwise) face
    dots = np.einsum("tk,tck->tc", s.geometric_normals(), s.normals)
    assert dots.min() > 0.5
    assert np.isfinite(s.uvs).all()


def test_sphere_normals_are_exact_and_radius_holds():
    d = minimal_description()
    d["objects"] = [{"shape": "sphere", "material": "white", "radius": 2.0, "translate": [1.0, 0.0, 0.0]}]
    s = scene_from_dict(d)
    p = s.positions.reshape(-1, 3) - [1.0, 0.0, 0.0]
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 2.0, rtol=1e-6)
    np.testing.assert_allclose(s.normals.reshape(-1, 3), p / 2.0, atol=1e-6)


def test_transform_order_is_scale_rotate_translate():
    d = minimal_description()
    d["objects"] = [{"shape": "quad", "material": "white", "size": [2.0, 2.0], "scale": [2.0, 1.0, 1.0],
                     "rotate": [0.0, 90.0, 0.0], "translate": [0.0, 0.0, 5.0]}]
    s = scene_from_dict(d)
    p = s.positions.reshape(-1, 3)
    # x extent 2 scaled to 4, then turned about y onto the z axis, then moved to z = 5
    np.testing.assert_allclose(np.sort(np.unique(p[:, 2].round(5))), [3.0, 7.0])
    np.testing.assert_allclose(np.abs(p[:, 0]), 0.0, atol=1e-6)
    np.testing.assert_allclose(s.geometric_normals(), [[1, 0, 0]] * 2, atol=1e-6)  # +z turned to +x


def test_euler_angles_turn_about_x_then_y_then_z():
    # rotate = [90, 90, 0]: R = Ry(90) Rx(90). The quad's +z normal goes to -y under Rx(90), and Ry
    # keeps y; its x edge stays on x under Rx and goes to -z under Ry(90). (The other order, Rx Ry,
    # would turn the normal to +x.)
    d = minimal_description()
    d["objects"] = [{"shape": "quad", "material": "white", "size": [4.0, 2.0], "rotate": [90.0, 90.0, 0.0]}]
    s = scene_from_dict(d)
    np.testing.assert_allclose(s.geometric_normals(), [[0, -1, 0]] * 2, atol=1e-6)
    p = s.positions.reshape(-1, 3)
    np.testing.assert_allclose(np.sort(np.unique(p[:, 2].round(5))), [-2.0, 2.0])  # the 4 m edge on z
    np.testing.assert_allclose(np.sort(np.unique(p[:, 0].round(5))), [-1.0, 1.0])  # the 2 m edge on x
    # and z last: [0, 0, 90] after [90, 0, 0] turns the -y normal to +x
    d["objects"][0]["rotate"] = [90.0, 0.0, 90.0]
    np.testing.assert_allclose(scene_from_dict(d).geometric_normals(), [[1, 0, 0]] * 2, atol=1e-6)


def test_mirror_scale_keeps_front_face_and_normals_consistent():
    d = minimal_description()
    d["objects"] = [{"shape": "sphere", "material": "white", "scale": [-1.0, 1.0, 1.0], "subdivisions": 1}]
    s = scene_from_dict(d)
    dots = np.einsum("tk,tck->tc", s.geometric_normals(), s.normals)
    assert dots.min() > 0.5
    c = s.positions.mean(axis=1)
    assert (np.einsum("tk,tk->t", s.geometric_normals(), c) > 0).all()  # still facing outwards


def test_cornell_box_matches_mitsuba():
    s = render.cornell_box()
    assert s.num_triangles == 36
    c = s.camera
    assert c.position == (0.0, 0.0, 3.9) and c.look_at == (0.0, 0.0, 0.0) and c.fov == pytest.approx(39.3077)
    light = s.emitter_mask()
    assert light.sum() == 2
    assert s.triangle_areas()[light].sum() == pytest.approx(0.46 * 0.38, rel=1e-6)
    np.testing.assert_allclose(s.geometric_normals()[light], [[0, -1, 0]] * 2, atol=1e-6)
    np.testing.assert_allclose(s.positions[light].reshape(-1, 3).mean(0), [0.0, 0.99, 0.01], atol=0.07)
    lo, hi = s.positions[light].reshape(-1, 3).min(0), s.positions[light].reshape(-1, 3).max(0)
    np.testing.assert_allclose(lo, [-0.23, 0.99, 0.01 - 0.19], atol=1e-6)
    np.testing.assert_allclose(hi, [0.23, 0.99, 0.01 + 0.19], atol=1e-6)
    lamp = s.materials[s.material_id[light][0]]
    assert lamp.radiance == (18.387, 13.9873, 6.75357) and lamp.albedo == (0.885809, 0.698859, 0.666422)
    assert not lamp.two_sided
    # walls face into the box; red at x = -1, green at x = +1
    names = {o.name: i for i, o in enumerate(s.objects)}
    for name, normal in (("floor", [0, 1, 0]), ("ceiling", [0, -1, 0]), ("back", [0, 0, 1]),
                         ("red_wall", [1, 0, 0]), ("green_wall", [-1, 0, 0])):
        tri = s.object_id == names[name]
        np.testing.assert_allclose(s.geometric_normals()[tri], [normal] * 2, atol=1e-6)
    red = s.materials[s.material_id[s.object_id == names["red_wall"]][0]]
    assert red.albedo == (0.570068, 0.0430135, 0.0443706)
    tall = s.positions[s.object_id == names["large_box"]].reshape(-1, 3)
    assert tall[:, 1].min() == pytest.approx(-1.01, abs=1e-6) and tall[:, 1].max() == pytest.approx(0.21, abs=1e-6)


def test_families_are_deterministic_and_varied():
    for name in ("rooms_ring", "shepard_metzler"):
        a, b, c = (render.make_scene(name, seed=s) for s in (5, 5, 6))
        assert same_arrays(a, b)
        assert not (a.num_triangles == c.num_triangles and np.array_equal(a.positions, c.positions))


def test_rooms_ring_layout():
    for seed in range(10):
        s = render.make_scene("rooms_ring", seed=seed)
        things = [o for o in s.objects if not o.name.startswith(("floor", "wall"))]
        assert 1 <= len(things) <= 3
        lo, hi = s.bounds()
        assert lo[0] >= -3.5 - 1e-6 and hi[0] <= 3.5 + 1e-6 and lo[1] >= -1e-6
        assert len(s.lights) == 1 and s.lights[0].direction[1] < 0  # a sun from above
        for o in things:
            assert abs(o.translate[0]) <= 1.5 + 0.35 + 1e-6 and abs(o.translate[2]) <= 1.5 + 0.35 + 1e-6
    cams = render.rooms_ring.cameras(np.random.default_rng(0), 20)
    for c in cams:
        assert math.hypot(c.position[0], c.position[2]) == pytest.approx(2.8) and c.position[1] == pytest.approx(1.2)
        assert c.fov == 45.0 and c.look_at == (0.0, 0.5, 0.0)


def test_shepard_metzler_is_a_face_connected_self_avoiding_walk():
    for seed in range(10):
        s = render.make_scene("shepard_metzler", seed=seed)
        centres = np.array([o.translate for o in s.objects])
        assert len(centres) == 7
        assert len({tuple(np.round(c, 4)) for c in centres}) == 7  # self-avoiding
        steps = np.abs(np.diff(centres, axis=0)).sum(axis=1)
        np.testing.assert_allclose(steps, 1.0, atol=1e-5)  # each cube shares a face with the last
        np.testing.assert_allclose(centres.mean(0), 0.0, atol=1e-5)
        assert len({s.materials[i].albedo for i in range(7)}) == 7
    for c in render.shepard_metzler.cameras(np.random.default_rng(1), 20):
        assert np.linalg.norm(c.position) == pytest.approx(9.0) and c.look_at == (0.0, 0.0, 0.0)


def test_round_trip_of_families_and_files(tmp_path, design_scene_file):
    scenes = [render.cornell_box(), render.make_scene("rooms_ring", seed=3), render.make_scene("shepard_metzler", seed=4),
              load_toml(design_scene_file)]
    for k, s in enumerate(scenes):
        out = tmp_path / "out" / f"s{k}.toml"
        save_scene(s, out)
        r = load_toml(out)
        assert same_arrays(s, r), s.source
        assert r.materials == s.materials and r.lights == s.lights and r.cameras == s.cameras
        assert scene_to_toml(r, out.parent) == out.read_text()  # a fixed point


def test_round_trip_with_texture_checker_and_environment(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "tex.png", np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    render.write_image(tmp_path / "sky.exr", np.full((8, 16, 3), 0.5, np.float32))
    d = minimal_description()
    d["materials"]["white"]["texture"] = "tex.png"
    d["materials"]["check"] = {"type": "metal", "checker": {"color1": [1.0, 0.0, 0.0], "color2": [0.0, 0.0, 1.0], "scale": 3.0}}
    d["objects"][0]["material"] = "check"
    d["environment"] = {"file": "sky.exr", "radiance": [2.0, 2.0, 2.0]}
    s = scene_from_dict(d, source="t", base_dir=tmp_path)
    assert len(s.textures) == 1 and s.textures[0].shape == (4, 4, 3)
    assert s.environment.image.shape == (8, 16, 3)
    save_scene(s, tmp_path / "sub" / "x.toml")
    text = (tmp_path / "sub" / "x.toml").read_text()
    assert '"../tex.png"' in text and '"../sky.exr"' in text  # paths relative to the new file
    r = load_toml(tmp_path / "sub" / "x.toml")
    assert same_arrays(s, r) and r.materials == s.materials
    np.testing.assert_array_equal(r.textures[0], s.textures[0])


def _two_box_glb(path):
    a = trimesh.creation.box(extents=(1, 1, 1))
    a.visual = trimesh.visual.ColorVisuals(a, face_colors=[255, 0, 0, 255])
    b = trimesh.creation.box(extents=(1, 2, 1))
    b.visual = trimesh.visual.ColorVisuals(b, face_colors=[0, 0, 255, 255])
    sc = trimesh.Scene()
    sc.add_geometry(a, node_name="left", transform=trimesh.transformations.translation_matrix([-2, 0, 0]))
    sc.add_geometry(b, node_name="right", transform=trimesh.transformations.translation_matrix([2, 1, 0]))
    sc.export(path)


@pytest.mark.parametrize("ext", ["glb", "obj", "ply", "stl"])
def test_mesh_file_as_a_scene(tmp_path, ext):
    path = tmp_path / f"model.{ext}"
    if ext == "glb":
        _two_box_glb(path)
    else:
        trimesh.creation.box(extents=(1, 2, 3)).export(path)
    s = load_scene(path)
    assert s.num_triangles == (24 if ext == "glb" else 12)
    assert s.lights and s.lights[0].type == "directional"
    # the camera frames the bounding box: every vertex projects inside the image, in front
    raster, depth = s.camera.project(s.positions.reshape(-1, 3))
    assert (depth > 0).all()
    assert (raster >= 0).all() and (raster[:, 0] <= s.camera.width).all() and (raster[:, 1] <= s.camera.height).all()
    if ext == "glb":
        assert len(s.objects) == 2
        cols = {o.name: s.materials[s.material_id[s.object_id == i][0]].albedo for i, o in enumerate(s.objects)}
        assert cols["left"][0] > 0.9 and cols["left"][2] < 0.05 and cols["right"][2] > 0.9
        lo, hi = s.bounds()
        np.testing.assert_allclose(lo, [-2.5, -0.5, -0.5], atol=1e-6)  # node transforms applied
        np.testing.assert_allclose(hi, [2.5, 2.0, 0.5], atol=1e-6)
    # converting writes a TOML that reloads to the same arrays
    save_scene(s, tmp_path / "conv" / "model.toml")
    assert same_arrays(s, load_toml(tmp_path / "conv" / "model.toml"))


def test_mesh_file_colours_and_uvs(tmp_path):
    # a near-black glTF base colour stays near black (trimesh stores the factor as uint8)
    dark = trimesh.creation.box()
    dark.visual = trimesh.visual.TextureVisuals(
        material=trimesh.visual.material.PBRMaterial(baseColorFactor=[0.004, 0.004, 0.004, 1.0]))
    dark.export(tmp_path / "dark.glb")
    assert max(load_scene(tmp_path / "dark.glb").materials[0].albedo) < 0.01
    # an OBJ with uvs but no .mtl gets the same default colour as one without uvs
    (tmp_path / "uv.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nf 1/1 2/2 3/3\n")
    (tmp_path / "plain.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\n")
    assert load_scene(tmp_path / "uv.obj").materials[0].albedo == load_scene(tmp_path / "plain.obj").materials[0].albedo
    # a mirroring node keeps each corner's uv with its corner (u = x, v = y before the mirror x -> -x)
    quad = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    quad.visual = trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [1, 1], [0, 1]])
    sc = trimesh.Scene()
    sc.add_geometry(quad, node_name="mirrored", transform=np.diag([-1.0, 1.0, 1.0, 1.0]))
    sc.export(tmp_path / "mirror.glb")
    s = load_scene(tmp_path / "mirror.glb")
    p, uv = s.positions.reshape(-1, 3), s.uvs.reshape(-1, 2)
    np.testing.assert_allclose(uv, np.stack([-p[:, 0], p[:, 1]], axis=1), atol=1e-6)
    assert (s.normals[..., 2] > 0.99).all()  # and the front face still faces +z


@pytest.mark.parametrize("family,seed", [("rooms_ring", 7), ("shepard_metzler", 3)])
def test_example_scene_files_are_what_scene_generate_writes(tmp_path, family, seed):
    from render import make_scene

    save_scene(make_scene(family, seed=seed), tmp_path / "x.toml")
    shipped = Path(__file__).resolve().parents[1] / "scenes" / f"{family}_seed{seed}.toml"
    assert (tmp_path / "x.toml").read_text() == shipped.read_text()


def test_degenerate_triangles_are_dropped_with_a_warning(tmp_path):
    m = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0]], [[0, 1, 2], [0, 1, 3]], process=False)
    write_ply_without_normals(tmp_path / "m.ply", m)
    d = minimal_description()
    d["objects"] = [{"shape": "mesh", "file": "m.ply", "material": "white"}]
    with pytest.warns(UserWarning, match="dropped 1 degenerate"):
        s = scene_from_dict(d, base_dir=tmp_path)
    assert s.num_triangles == 1


def test_render_does_not_import_torch_or_start_taichi():
    import subprocess

    code = ("import sys, render; render.cornell_box(); import trirender.cli; "
            "print(sorted(m for m in ('torch', 'taichi', 'neural') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_ctrl_c_during_trimesh_import_is_not_swallowed():
    # trimesh guards its optional imports with `except BaseException`: a Ctrl-C arriving inside one
    # (networkx here, sent from an import hook so that it lands there every time) must still stop
    # the program once trimesh is loaded, instead of vanishing as it did
    code = (
        "import os, signal, sys\n"
        "class Hook:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'networkx':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, Hook())\n"
        "from render.shapes import make_sphere\n"
        "try:\n"
        "    make_sphere(subdivisions=5)\n"  # not in the stored table: trimesh makes it
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
        "    sys.exit(0)\n"
        "print('swallowed')\n")
    import subprocess

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         preexec_fn=sigint_as_from_a_terminal)
    assert (res.returncode, res.stdout.strip()) == (0, "interrupted"), res.stdout + res.stderr


def test_icosphere_table_equals_trimesh():
    # the stored icospheres must be trimesh's, bit for bit: a sphere's triangles would otherwise
    # change with the table, and with them every dataset's bytes
    from render.shapes import ICOSPHERE_TABLE_LEVELS, icosphere

    assert ICOSPHERE_TABLE_LEVELS >= 4  # 3 is the default
    for level in range(ICOSPHERE_TABLE_LEVELS + 1):  # one past the table: trimesh's own
        ico = trimesh.creation.icosphere(subdivisions=level, radius=1.0)
        v, f = icosphere(level)
        assert v.dtype == np.float64 and f.dtype == np.int64
        assert np.array_equal(v, ico.vertices) and np.array_equal(f, ico.faces), level


def test_built_in_spheres_and_dataset_scenes_do_not_import_trimesh():
    # importing trimesh costs ~0.7 s, paid by every dataset worker when a sphere needed it
    import subprocess

    code = ("import sys; from render.shapes import make_sphere; from render.families import make_scene\n"
            "make_sphere(); make_sphere(subdivisions=0, smooth=False)\n"
            "for seed in range(20): make_scene('rooms_ring', seed=seed); make_scene('shepard_metzler', seed=seed)\n"
            "print('trimesh' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_saving_a_mesh_built_in_code_is_refused_by_name(tmp_path):
    # a mesh object with arrays but no file (built with dataclasses.replace, as bench/pathtracer.py's
    # mesh scene is) used to be written without its triangles: a TOML that no longer loads
    import dataclasses

    from render.scene import SceneObject

    base = render.cornell_box()
    s = dataclasses.replace(base, objects=base.objects + (SceneObject("blob", "mesh", "white"),))
    out = tmp_path / "blob.toml"
    with pytest.raises(render.SceneError, match=r"objects\[\d+\]: mesh 'blob' has no file"):
        save_scene(s, out)
    assert not out.exists()
