"""bench/ab.py: exporting revisions' render/ and timing them in alternation (with stand-in trees, so
that no kernel compiles)."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import ab  # noqa: E402

FAKE_RENDER = textwrap.dedent("""
    import numpy as np
    FAMILIES = {{"cornell_box": None}}
    RATE = {rate}
    class _F:
        def __init__(self, seed):
            self.rgb = np.full((2, 2, 3), {shade}, np.float32)
            self.depth = np.ones((2, 2), np.float32)
            self.meta = {{"paths_per_second": RATE * 1e6 * (1 + seed), "device": "fake", "kernel": "k"}}
    def make_scene(name, seed, width, height):
        return (name, width, height)
    def pathtrace(scene, spp, max_depth, seed, backend, interruptible=False):
        assert scene == ("cornell_box", 16, 16) and spp == 4 and backend == "cpu"
        assert interruptible == (seed == 0)  # the first render in passes, as `trirender render` renders
        f = _F(seed)
        if interruptible:
            f.meta["first_pass_seconds"] = {first_pass}
        return f
""")


def _fake_tree(root: Path, label: str, rate: float, shade: float, first_pass: float = 0.25) -> None:
    (root / label / "render").mkdir(parents=True)
    (root / label / "render" / "__init__.py").write_text(FAKE_RENDER.format(rate=rate, shade=shade,
                                                                             first_pass=first_pass))
    (root / label / "COMMIT").write_text(label + "\n")


def test_run_alternates_trees_and_reports_ratios_and_image_hashes(tmp_path, capsys):
    _fake_tree(tmp_path, "old", 2.0, 0.5, first_pass=3.0)
    _fake_tree(tmp_path, "new", 3.0, 0.25, first_pass=1.0)
    (tmp_path / "ORDER").write_text("old\nnew\n")
    out = tmp_path / "ab.json"
    ab.main(["run", "--dir", str(tmp_path), "--size", "16", "--spp", "4", "--repeats", "3", "--rounds", "2",
             "--out", str(out)])
    printed = capsys.readouterr().out
    rounds = [line.split()[2].rstrip(":") for line in printed.splitlines() if line.startswith("round")]
    assert rounds == ["old", "new", "old", "new"]  # alternating, in ORDER's order
    doc = json.loads(out.read_text())
    old, new = doc["results"]["trees"]
    # renders 2 and 3 are timed (seeds 1 and 2: rate x 2 and x 3), the first is not: median 2.5 x rate
    assert old["M paths/s"] == pytest.approx(5.0) and new["M paths/s"] == pytest.approx(7.5)
    assert new["ratio"] == pytest.approx(1.5) and old["ratio"] == 1.0
    assert old["rgb_sha"] != new["rgb_sha"] and old["depth_sha"] == new["depth_sha"]
    assert doc["settings"]["trees"] == ["old", "new"] and doc["machine"]["cores"] >= 1
    # warm start: process start (imports, the scene) to the end of the first pass, from round 2 on
    assert 3.0 <= old["warm start s"] < 3.0 + 2.0 and 1.0 <= new["warm start s"] < 1.0 + 2.0
    assert [len(doc["results"]["runs"][t]) for t in ("old", "new")] == [2, 2]


def test_run_names_missing_trees(tmp_path):
    _fake_tree(tmp_path, "old", 2.0, 0.5)
    with pytest.raises(SystemExit, match="no .*<tree>/render for nope"):
        ab.main(["run", "--dir", str(tmp_path), "--trees", "old,nope"])
    with pytest.raises(SystemExit, match="prepare REV"):
        ab.main(["run", "--dir", str(tmp_path / "empty")])
    # a tree whose renders fail is reported, and the run ends non-zero after saving what it has
    (tmp_path / "old" / "render" / "__init__.py").write_text("FAMILIES = {}\ndef load_scene(p):\n    raise OSError(p)\n")
    with pytest.raises(SystemExit, match="no result for old"):
        ab.main(["run", "--dir", str(tmp_path), "--trees", "old", "--rounds", "1", "--repeats", "2",
                 "--out", str(tmp_path / "ab.json")])
    assert json.loads((tmp_path / "ab.json").read_text())["results"]["trees"][0]["M paths/s"] == "failed"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_prepare_exports_a_revision_and_the_working_tree(tmp_path):
    ab.main(["prepare", "HEAD", "work", "--dir", str(tmp_path)])
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert (tmp_path / "ORDER").read_text().split() == [head, "work"]
    for label in (head, "work"):
        assert (tmp_path / label / "render" / "pathtracer.py").is_file()
    assert (tmp_path / "work" / "COMMIT").read_text().strip() == head + "+work"
    with pytest.raises(SystemExit, match="nosuchrev"):
        ab.main(["prepare", "nosuchrev", "--dir", str(tmp_path)])


FAKE_VIEWS = textwrap.dedent("""
    import numpy as np
    RATE = 2.0
    class _F:
        def __init__(self, seed):
            self.rgb = np.zeros((2, 2, 3), np.float32)
            self.depth = np.ones((2, 2), np.float32)
            self.meta = {"paths_per_second": RATE * 1e6 * (1 + seed), "device": "fake", "kernel": "k"}
    def make_scene(name, seed, width, height):
        return (name, width, height)
    def pathtrace_views(scene, cameras, spp, max_depth, seeds, backend):
        assert scene == ("rooms_ring", 16, 16) and cameras == [("cam", i, 16) for i in range(3)]
        return [_F(s) for s in seeds]
""")
FAKE_FAMILIES = textwrap.dedent("""
    class _Family:
        def cameras(self, rng, n, width, height):
            return [("cam", i, width) for i in range(n)]
    FAMILIES = {"rooms_ring": _Family()}
""")


def test_views_renders_a_family_scene_s_views_in_one_call(tmp_path):
    # --views N: N cameras of the family in one pathtrace_views call, as a dataset renders a scene;
    # the seeds run on per render (r * N + view), so each timed render's first view has seed r * N
    (tmp_path / "t" / "render").mkdir(parents=True)
    (tmp_path / "t" / "render" / "__init__.py").write_text(FAKE_VIEWS + "FAMILIES = {'rooms_ring': None}\n")
    (tmp_path / "t" / "render" / "families.py").write_text(FAKE_FAMILIES)
    (tmp_path / "t" / "COMMIT").write_text("t\n")
    out = tmp_path / "ab.json"
    ab.main(["run", "--dir", str(tmp_path), "--trees", "t", "--scene", "rooms_ring", "--size", "16", "--views", "3",
             "--repeats", "3", "--rounds", "1", "--out", str(out)])
    doc = json.loads(out.read_text())
    (tree,) = doc["results"]["trees"]
    assert tree["M paths/s"] == pytest.approx(2.0 * (4 + 7) / 2)  # seeds 3 and 6 timed: rate x 4 and x 7
    assert doc["settings"]["views"] == 3
