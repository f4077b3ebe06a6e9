"""Bad input is refused at load time with an error naming the file, the field path and what was
expected -- never a crash and never a half-built scene (DESIGN.md, "The scene")."""

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import render
from render import Scene, SceneError, scene_from_dict
from render.families import cornell_box_description, rooms_ring_description

from helpers import minimal_description, write_ply_without_normals

SOURCE = "mutated.toml"


@pytest.fixture(scope="module")
def mesh_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("meshes")
    write_ply_without_normals(d / "ok.ply", trimesh.creation.icosphere(1))
    write_ply_without_normals(d / "empty.ply", trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), int), process=False))
    write_ply_without_normals(d / "flat.ply", trimesh.Trimesh([[0, 0, 0], [1, 1, 1], [2, 2, 2]], [[0, 1, 2]], process=False))
    nan = trimesh.creation.box()
    v = nan.vertices.copy()
    v[3, 1] = np.nan
    write_ply_without_normals(d / "nan.ply", trimesh.Trimesh(v, nan.faces, process=False))
    (d / "garbage.ply").write_bytes(b"ply\nthis is not a mesh\n")
    return d


def base_descriptions():
    return [minimal_description("ok.ply"), cornell_box_description(), rooms_ring_description(np.random.default_rng(2))]


def refuse(desc, base_dir, *field_words):
    with pytest.raises(SceneError) as info:
        scene_from_dict(desc, source=SOURCE, base_dir=base_dir)
    msg = str(info.value)
    assert msg.startswith(SOURCE + ": "), msg
    for w in field_words:
        assert w in msg, msg
    assert "\n" not in msg
    return msg


# --- each malformed input named in DESIGN.md ---------------------------------------------------
def test_a_node_of_a_single_mesh_file_is_checked(mesh_dir):
    # it was ignored for PLY/OBJ/STL files (a glTF scene's node names were already checked)
    d = minimal_description("ok.ply")
    k = len(d["objects"]) - 1  # the mesh object
    assert d["objects"][k]["shape"] == "mesh"
    d["objects"][k]["node"] = "teapot"
    refuse(d, mesh_dir, f"objects[{k}].node", "no mesh node 'teapot'", "expected 'ok'")
    d["objects"][k]["node"] = "ok"
    scene_from_dict(d, source=SOURCE, base_dir=mesh_dir)


def test_unknown_key(mesh_dir):
    d = minimal_description("ok.ply")
    d["objects"][1]["colour"] = [1.0, 0.0, 0.0]
    refuse(d, mesh_dir, "objects[1].colour", "unknown key", "material")
    for key in ("sky", "scene"):  # a [scene] table is not part of the format either
        d = minimal_description("ok.ply")
        d[key] = {"max_depth": 3}
        refuse(d, mesh_dir, key, "unknown top-level key")


def test_wrong_type(mesh_dir):
    d = minimal_description("ok.ply")
    d["objects"][0]["radius"] = "big"
    refuse(d, mesh_dir, "objects[0].radius", "number", "'big'")
    d = minimal_description("ok.ply")
    d["camera"]["width"] = 64.5
    refuse(d, mesh_dir, "camera.width", "integer")


def test_unknown_material(mesh_dir):
    d = minimal_description("ok.ply")
    d["objects"][2]["material"] = "wite"
    refuse(d, mesh_dir, "objects[2].material", "'wite'", "white, lamp")


def test_missing_mesh_file(mesh_dir, monkeypatch):
    d = minimal_description("meshes/bunny.ply")
    refuse(d, mesh_dir, "objects[2].file", "not found", "bunny.ply")
    monkeypatch.chdir(mesh_dir)  # a scene given by a relative path: the message shows where it looked
    refuse(d, Path("."), "objects[2].file", f"not found: {mesh_dir.resolve() / 'meshes' / 'bunny.ply'}")


@pytest.mark.parametrize("name,words", [("nan.ply", ("vertex 3", "not finite")), ("empty.ply", ("no triangles",)),
                                        ("flat.ply", ("zero-area",)), ("garbage.ply", ("cannot read mesh",))])
def test_bad_mesh_files(mesh_dir, name, words):
    d = minimal_description(name)
    refuse(d, mesh_dir, "objects[2]", *words)


def test_empty_scene(mesh_dir):
    d = minimal_description()
    d["objects"] = []
    refuse(d, mesh_dir, "objects", "empty")
    del d["objects"]
    refuse(d, mesh_dir, "objects", "empty")


def test_zero_area_light(mesh_dir):
    d = minimal_description()
    d["objects"][1]["scale"] = [1.0, 0.0, 1.0]
    refuse(d, mesh_dir, "objects[1].scale", "zero-area light")
    d = minimal_description()
    d["objects"][1]["size"] = [0.5, 1e-300]
    refuse(d, mesh_dir, "objects[1]", "zero-area light")


@pytest.mark.parametrize("scale", [1e13, 1e39, 1e300, 1e308])  # 1e300: the areas overflow, 1e308 the edges
def test_coordinates_beyond_float32_ray_tests_are_refused(mesh_dir, scale):
    # 1e39 overflows float32 itself; 1e13 does not, but float32 ray-triangle tests would miss it
    d = minimal_description()
    d["objects"][0]["scale"] = scale
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning before the error
        refuse(d, mesh_dir, "objects[0]", f"{render.loader.MAX_COORDINATE:.0e}")
    d["objects"][0]["scale"] = 1e11
    assert np.abs(scene_from_dict(d, source=SOURCE, base_dir=mesh_dir).positions).max() > 1e10
    # and so are cameras (every ray starts within the range, which bounds the path tracer's segments)
    d["camera"]["position"] = [0.0, 1.0, scale]
    refuse(d, mesh_dir, "camera.position", f"{render.loader.MAX_COORDINATE:.0e}")


@pytest.mark.parametrize("value", [5.0, -1.0])
def test_texture_and_environment_images_obey_their_ranges(tmp_path, value):
    # a texture stands for a colour ([0, 1]); an environment map is radiance (>= 0, any size)
    from render.image_io import write_exr

    write_exr(tmp_path / "img.exr", np.full((4, 8, 3), value, np.float32))
    d = minimal_description()
    d["materials"]["white"]["texture"] = "img.exr"
    refuse(d, tmp_path, "materials.white.texture", "img.exr", "expected values in [0, 1]")
    d = minimal_description()
    d["environment"] = {"file": "img.exr"}
    if value < 0:
        refuse(d, tmp_path, "environment.file", "expected values >= 0")
    else:
        assert scene_from_dict(d, source=SOURCE, base_dir=tmp_path).environment.image.max() == value


def test_camera_looking_along_up(mesh_dir):
    d = minimal_description()
    d["camera"]["look_at"] = [0.0, 3.0, 3.4]  # straight up from (0, 1, 3.4)
    refuse(d, mesh_dir, "camera", "up")


def test_nan_number(mesh_dir):
    d = minimal_description()
    d["lights"][0]["intensity"][1] = math.nan
    refuse(d, mesh_dir, "lights[0].intensity[1]", "finite")


def test_toml_syntax_error_names_the_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[camera\nposition = 1")
    with pytest.raises(SceneError, match=r"broken\.toml: not valid TOML"):
        render.load_toml(p)


def test_non_text_scene_file_names_the_file(tmp_path):
    p = tmp_path / "picture.toml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(SceneError, match=r"picture\.toml: not a text file .*not UTF-8"):
        render.load_toml(p)


def test_misspelt_key_is_named_before_the_missing_one(mesh_dir):
    d = minimal_description()
    light = d["lights"][0]
    light["intensty"] = light.pop("intensity")  # one typo: an unknown key and a missing one
    refuse(d, mesh_dir, "lights[0].intensty", "unknown key", "intensity")


def test_an_unknown_key_in_a_nested_table_lists_that_tables_keys(mesh_dir):
    # it listed the material's keys for a typo inside its checker table
    d = minimal_description()
    name = next(iter(d["materials"]))
    d["materials"][name] = {"type": "diffuse", "checker": {"color1": [1, 1, 1], "color2": [0, 0, 0], "sise": 4}}
    msg = refuse(d, mesh_dir, f"materials.{name}.checker.sise", "unknown key", "color1, color2, scale")
    assert "albedo" not in msg


def test_wrong_vector_length_says_how_many(mesh_dir):
    d = minimal_description()
    d["camera"]["position"] = [0.0, 3.9]
    refuse(d, mesh_dir, "camera.position", "expected at least 3 values, got 2")
    d["camera"]["position"] = [0.0, 3.9, 1.0, 2.0]
    refuse(d, mesh_dir, "camera.position", "expected at most 3 values, got 4")
    # one number where three go (a grey, a uniform offset): say how many, with an example
    for where in (("camera", "position"), ("materials", "white", "albedo"), ("environment", "radiance")):
        d = minimal_description()
        d.setdefault("environment", {})
        table = d
        for k in where[:-1]:
            table = table[k]
        table[where[-1]] = 0.5
        refuse(d, mesh_dir, ".".join(where), "expected a list of 3 numbers, e.g. [0.5, 0.5, 0.5] (got 0.5)")


# --- property-based: mutate valid scenes --------------------------------------------------------
def leaves(node, path=()):
    """Every (path, value) of a nested description, lists of numbers counted as one leaf too."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, path + (k,))
    elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        for i, v in enumerate(node):
            yield from leaves(v, path + (i,))
    else:
        yield path, node
        if isinstance(node, list):
            for i, v in enumerate(node):
                yield path + (i,), v


def tables(node, path=()):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from tables(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from tables(v, path + (i,))


def set_at(desc, path, value):
    node = desc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def field_text(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out


def _category(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


WRONG_VALUES = st.sampled_from(["text", True, {"a": 1}, ["x", "y", "z"], [1.0, 2.0], []]) | st.integers(-5, 5) | st.floats(-1e3, 1e3)


def check_scene_invariants(s: Scene):
    assert s.num_triangles > 0
    assert np.isfinite(s.positions).all() and np.isfinite(s.normals).all() and np.isfinite(s.uvs).all()
    assert s.material_id.min() >= 0 and s.material_id.max() < len(s.materials)
    assert s.object_id.min() >= 0 and s.object_id.max() < len(s.objects)
    assert s.cameras


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_scenes_are_refused_cleanly(mesh_dir, data):
    desc = copy.deepcopy(data.draw(st.sampled_from(base_descriptions())))
    kind = data.draw(st.sampled_from(["wrong_type", "nan", "unknown_key", "unknown_material", "bad_mesh",
                                      "zero_size", "along_up", "delete"]))
    expect_refusal, words = True, []
    if kind == "wrong_type":
        path, value = data.draw(st.sampled_from(list(leaves(desc))))
        uniform_scale = path[-1] == "scale"  # a single number is a valid scale as well as a list of 3
        new = data.draw(WRONG_VALUES.filter(lambda x: _category(x) != _category(value)
                                            and not (uniform_scale and _category(x) == "number")))
        set_at(desc, path, new)
        words = [field_text(path)]
    elif kind == "nan":
        floats = [(p, v) for p, v in leaves(desc) if isinstance(v, float)]
        path, _ = data.draw(st.sampled_from(floats))
        set_at(desc, path, data.draw(st.sampled_from([math.nan, math.inf, -math.inf])))
        words = [field_text(path)]
    elif kind == "unknown_key":
        path, table = data.draw(st.sampled_from([(p, t) for p, t in tables(desc) if p]))
        if path[0] == "materials" and len(path) == 1:  # keys of [materials] are names: use a bad material instead
            table["extra"] = {"type": "plastic"}
        else:
            table["no_such_key"] = 1.0
        words = [field_text(path[:2])]
    elif kind == "unknown_material":
        i = data.draw(st.integers(0, len(desc["objects"]) - 1))
        desc["objects"][i]["material"] = data.draw(st.text(min_size=1, max_size=8).filter(lambda t: t not in desc["materials"]))
        words = [f"objects[{i}].material"]
    elif kind == "bad_mesh":
        i = data.draw(st.integers(0, len(desc["objects"]) - 1))
        name = data.draw(st.sampled_from(["nan.ply", "empty.ply", "flat.ply", "garbage.ply", "missing.ply"]))
        desc["objects"][i] = {"shape": "mesh", "file": name, "material": desc["objects"][i]["material"]}
        words = [f"objects[{i}]"]
    elif kind == "zero_size":
        desc["camera"][data.draw(st.sampled_from(["width", "height"]))] = data.draw(st.integers(-3, 0))
        words = ["camera"]
    elif kind == "along_up":
        c = desc["camera"]
        k = data.draw(st.floats(0.1, 10.0) | st.floats(-10.0, -0.1))
        c["look_at"] = [p + k * u for p, u in zip(c["position"], c.get("up", [0.0, 1.0, 0.0]))]
        words = ["camera"]
    else:  # delete a key anywhere: optional keys may go, required ones must be named
        path, _ = data.draw(st.sampled_from([(p, v) for p, v in leaves(desc) if not isinstance(p[-1], int)]))
        node = desc
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
        expect_refusal = None
        words = [str(path[-1])]  # a refusal names the key that went missing
    try:
        s = scene_from_dict(desc, source=SOURCE, base_dir=mesh_dir)
    except SceneError as exc:
        msg = str(exc)
        assert msg.startswith(SOURCE + ": ") and "\n" not in msg
        for w in words:
            assert w in msg, (kind, msg)
        return
    assert expect_refusal is None, f"{kind} was accepted"
    check_scene_invariants(s)
