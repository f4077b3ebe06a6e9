"""README's set-up commands are the ones CI runs, and its example scene is one the loader takes."""

import re
from pathlib import Path

import render

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert "pytest" in cmds[1] and "trirender" in cmds[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci.splitlines()


def test_readme_minimal_scene_is_the_design_one_and_loads(tmp_path):
    text = (ROOT / "README.md").read_text()
    toml = re.search(r"## The scene format.*?```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "meshes").mkdir()
    import trimesh

    trimesh.creation.icosphere(1).export(tmp_path / "meshes" / "bunny.ply")
    (tmp_path / "s.toml").write_text(toml)
    s = render.load_toml(tmp_path / "s.toml")
    assert s.num_triangles == 80 and s.lights[0].intensity == (5.0, 5.0, 5.0)


def test_example_scenes_load():
    for path in sorted((ROOT / "scenes").glob("*.toml")):
        s = render.load_toml(path)
        assert s.num_triangles > 0, path
