"""render.ti_frontend: memoizing Taichi's frontend helpers must not change what they return."""

import numpy as np
import pytest
import taichi as ti
from taichi.lang import kernel_impl
from taichi.lang.ast.ast_transformer_utils import ASTTransformerContext

from render.pathtracer import init_backend
from render.ti_frontend import memoized_frontend


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
