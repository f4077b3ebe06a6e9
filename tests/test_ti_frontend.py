"""render.ti_frontend: memoizing Taichi's frontend helpers must not change what they return."""

import inspect
import sys

import numpy as np
import pytest
import taichi as ti
from taichi.lang import kernel_impl
from taichi.lang.ast.ast_transformer_utils import ASTTransformerContext

from render.pathtracer import init_backend
from render.ti_frontend import memoized_frame_info, memoized_frontend


def make_kernel(broken=False):
    """A fresh kernel (new function objects, so Taichi runs its frontend again) whose ti.funcs are
    inlined at several sites and which has nodes of one kind that share a line and an end column;
    broken: one of them names an undefined variable."""

    @ti.func
    def twice(x):
        y = x
        if ti.static(broken):
            y = x + no_such_name  # noqa: F821
        return y + x ** 1.0 ** 1.0  # two BinOps (** groups to the right) that end together

    @ti.func
    def three(a):
        return twice(a) + twice(a + 1.0) + twice(a + 2.0)

    @ti.kernel
    def fill(out: ti.types.ndarray()):
        for i in range(out.shape[0]):
            out[i] = three(ti.cast(i, ti.f32))

    return fill


@pytest.fixture(scope="module", autouse=True)
def taichi_cpu():
    init_backend("cpu")


def test_memoized_positions_are_taichis_own_and_repeats_are_skipped(monkeypatch):
    original = ASTTransformerContext.get_pos_info
    computed = []

    def counting(ctx, node):
        computed.append(1)
        return original(ctx, node)

    monkeypatch.setattr(ASTTransformerContext, "get_pos_info", counting)
    calls, differ = [], []
    out = np.zeros(4, np.float32)
    with memoized_frontend() as active:
        assert active
        memo = ASTTransformerContext.get_pos_info
        assert memo is not counting

        def checking(ctx, node):
            got = memo(ctx, node)
            calls.append(1)
            if got != original(ctx, node):
                differ.append((type(node).__name__, node.lineno, got))
            return got

        ASTTransformerContext.get_pos_info = checking
        try:
            make_kernel()(out)
        finally:
            ASTTransformerContext.get_pos_info = memo
    assert ASTTransformerContext.get_pos_info is counting  # restored on exit
    assert differ == []
    assert len(calls) > 50
    assert len(computed) < 0.7 * len(calls)  # `twice` is inlined three times: its nodes are computed once
    np.testing.assert_allclose(out, [2 * (3 * i + 3) for i in range(4)])


def test_compile_errors_read_the_same_and_taichi_is_restored_after_them():
    before = (ASTTransformerContext.get_pos_info, kernel_impl.getsourcefile, kernel_impl.getsourcelines)
    out = np.zeros(4, np.float32)
    with pytest.raises(Exception) as plain:
        make_kernel(broken=True)(out)
    with pytest.raises(Exception) as memoized, memoized_frontend():
        make_kernel(broken=True)(out)
    assert "no_such_name" in str(plain.value)
    assert type(memoized.value) is type(plain.value)
    assert str(memoized.value) == str(plain.value)
    assert (ASTTransformerContext.get_pos_info, kernel_impl.getsourcefile, kernel_impl.getsourcelines) == before


def test_other_taichi_versions_are_left_alone(monkeypatch):
    monkeypatch.setattr(ti, "__version__", (1, 8, 0))
    before = ASTTransformerContext.get_pos_info
    with memoized_frontend() as active:
        assert not active
        assert ASTTransformerContext.get_pos_info is before


@pytest.fixture
def counted_frame_info(monkeypatch):
    """inspect.getframeinfo, counting the calls that reach it."""
    original = inspect.getframeinfo
    calls = []

    def counting(frame, context=1):
        calls.append(frame)
        return original(frame, context)

    monkeypatch.setattr(inspect, "getframeinfo", counting)
    return original, counting, calls


def test_frame_info_is_inspects_own_once_per_frame_and_instruction(counted_frame_info):
    original, counting, calls = counted_frame_info

    def paused():
        yield sys._getframe()
        yield None

    steps = paused()
    frame = next(steps)  # suspended at its first yield
    with memoized_frame_info():
        first = [inspect.getframeinfo(frame) for _ in range(3)]
        assert len(calls) == 1 and all(info == original(frame) for info in first)
        next(steps)  # the same frame at its second yield: another line, asked again
        second = inspect.getframeinfo(frame)
        assert len(calls) == 2 and second == original(frame) and second.lineno == first[0].lineno + 1
        try:
            raise ValueError
        except ValueError as e:  # a traceback object is passed through, not memoized
            tb = e.__traceback__
        assert inspect.getframeinfo(tb) == inspect.getframeinfo(tb) == original(tb) and len(calls) == 4
    assert inspect.getframeinfo is counting  # restored on exit


def test_module_level_ti_funcs_ask_about_the_import_frame_once(counted_frame_info, tmp_path, monkeypatch):
    # Each @ti.func decorator asks inspect about the frame three levels up, which for a module-level
    # decorator is the import system's frame running the module: the same frame at the same
    # instruction for all of them. (Unmemoized, each such call scans every loaded module.)
    calls = counted_frame_info[2]
    (tmp_path / "many_funcs.py").write_text(
        "import taichi as ti\n" + "".join(f"@ti.func\ndef f{i}(x):\n    return x + {i}\n\n" for i in range(12)))
    monkeypatch.syspath_prepend(str(tmp_path))
    with memoized_frame_info():
        import many_funcs
    assert 1 <= len(calls) <= 2, len(calls)
    monkeypatch.delitem(sys.modules, "many_funcs")
    calls.clear()
    import many_funcs  # noqa: F401 - the same module again, without the memo
    assert len(calls) >= 12
