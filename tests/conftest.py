import shutil

import pytest


def _has_cuda() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cli_in_process(capsys, monkeypatch):
    """Runs ``trirender ARGS`` through its entry point (``trirender.cli.main``) in this process and
    returns what a subprocess would: a CompletedProcess with the exit status, stdout and stderr.
    For the many refusals of bad input, which a subprocess per case (importing torch, numba and
    Taichi each time) made one of the suite's slowest parts; tests of the console script as such
    still start it as a user does. An exception that escapes main() fails the test with its
    traceback, as it would print one from the console script."""
    import subprocess
    import warnings

    from trirender import cli

    def call(*args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        # the warning filters a fresh interpreter has (pytest shows deprecation warnings that the
        # console script would not); catch_warnings also puts back the showwarning main() replaces
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            try:
                cli.main([str(a) for a in args])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["trirender", *args], code, out, err)

    return call
