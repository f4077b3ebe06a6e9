"""What every bench script records beside its figures: the machine, the versions, the settings."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from render.cpuinfo import cpu_model

_HERE = Path(__file__).resolve().parent
# In a checkout the figures go to bench/results (committed); from an installed package, to
# ./bench_results in the folder the bench runs from.
RESULTS = _HERE / "results" if (_HERE.parent / "pyproject.toml").is_file() else Path.cwd() / "bench_results"


def versions(*modules: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("numpy", "numba", "taichi", "torch", *modules):
        try:
            m = __import__(name)
        except Exception:
            out[name] = None
            continue
        v = getattr(m, "__version__", None)
        out[name] = ".".join(map(str, v)) if isinstance(v, (list, tuple)) else (str(v) if v is not None else None)
    return out


def git_commit() -> str | None:
    """The checkout's HEAD commit (with "+dirty" when tracked files other than bench results differ
    from it), or None."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git_commit": git_commit()}
    switches = {k: v for k, v in os.environ.items() if k.startswith("TRIRENDER_")}  # e.g. TRIRENDER_FMA=0
    if switches:
        info["environment"] = switches
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def save(name: str, settings: dict[str, Any], results: Any, path: str | Path | None = None,
         modules: tuple[str, ...] = ()) -> Path:
    """Write ``{machine (with the date and commit), versions, settings, results}`` as JSON (atomically)
    and return the path."""
    from render.image_io import write_json_atomic

    path = Path(path) if path else RESULTS / f"{name}.json"
    doc = {"bench": name, "machine": machine(),
           "versions": versions(*modules), "settings": settings, "results": results}
    write_json_atomic(path, doc)
    return path


def run_child(code: str, args: dict, env: dict | None = None, timeout: float | None = None,
              cwd: str | Path = _HERE.parent) -> Any:
    """Run ``code`` (a script reading its JSON arguments from argv[1]) in a fresh Python, with ``env``
    on top of this environment, and return the JSON it printed after ``RESULT``. RuntimeError with
    its output's tail if it printed none; subprocess.TimeoutExpired past ``timeout`` seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:  # Taichi wants real files
        f.write(code)
        path = f.name
    try:
        p = subprocess.run([sys.executable, path, json.dumps(args)], capture_output=True, text=True,
                           env={**os.environ, **(env or {})}, cwd=str(cwd), timeout=timeout)
    finally:
        os.unlink(path)
    for line in p.stdout.splitlines():
        if "RESULT" in line:  # a library's log may share the line (colour codes, no newline)
            return json.loads(line[line.index("RESULT") + 6:])
    raise RuntimeError(f"child failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
