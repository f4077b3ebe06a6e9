"""Faster warm starts of big Taichi kernels: memoized pure helpers of Taichi 1.7's Python frontend.

On every run, even when Taichi's offline cache holds the compiled kernel, Taichi runs its Python
frontend over the kernel to compute the cache key. For the packet kernel (lane-by-lane loops unrolled
with ``ti.static``, ti.funcs inlined at many sites) much of that time goes to work whose result
does not change within a compile:

- the source position of each AST node it visits, formatted for error messages through
  ``textwrap`` (23,155 calls on 3,876 distinct nodes for the Cornell box's 16-lane kernel),
  computed again for each inlined copy of a ti.func and each unrolled iteration;
- the source file and lines of each ti.func, read again at every call site it is inlined at;
- whether a ti.func or kernel is decorated inside a class body, which each decorator decides by
  reading the source line of the frame three levels up (``inspect.getframeinfo``). For a
  module-level decorator that frame is the import system's, which has no source file, and for
  such a frame ``inspect`` scans every loaded module on each call: 171 calls (96 in Taichi's own
  modules, 75 in ours), 0.2 s of a 2-s warm start, 1-2 distinct frames. ``memoized_frame_info()``
  memoizes that, on its own around ``import taichi`` and within ``memoized_frontend()``.

``memoized_frontend()`` memoizes exactly those calls while the block runs (the path tracer imports
its kernel modules and compiles its first launch inside it): every result is the one
Taichi would compute (checked string by string on the three variants of the path tracer's kernel),
so the cache key, the IR and error messages are unchanged; only repeats are skipped. Warm start of
the Cornell box's kernel on a 2-core AMD EPYC: its compile step (frontend plus loading from the
offline cache) 1.02 s against 1.37 s without at 8 lanes, 1.32 s against 1.83 s at 16 (medians of
eight and five alternating pairs). It patches attributes of Taichi 1.7's modules and restores
them on exit; with another Taichi, or where one is missing, it leaves Taichi alone (the
``inspect.getframeinfo`` memo does not depend on Taichi's version).
"""

from __future__ import annotations

import contextlib
import inspect
import types


def _memo_pos_info(get_pos_info, memo: dict):
    # The string depends on the context's file, source lines, indent, first line and function name,
    # all read from its Python function (whose source lines are memoized too, so they are the same
    # lines for every context of it), and on the node's class and span (a compound statement's
    # string also on its first body line, which is where the source puts it).
    def memoized(ctx, node):
        key = (ctx.func.func, ctx.lineno_offset, type(node), node.lineno, node.end_lineno, node.col_offset,
               node.end_col_offset)
        info = memo.get(key)
        if info is None:
            info = memo[key] = get_pos_info(ctx, node)
        return info

    return memoized


def _memo_per_object(fn, memo: dict, copy=lambda result: result):
    # (Taichi passes these a ti.func's or kernel's Python function: always hashable)
    def memoized(obj):
        if obj not in memo:
            memo[obj] = fn(obj)
        return copy(memo[obj])

    return memoized


def _memo_frame_info(getframeinfo, memo: dict):
    # What inspect.getframeinfo returns for a frame (file, line, function, the source lines around
    # the line, the instruction's position) depends only on its code object, its current
    # instruction and line, and the context asked for (and on the source files, which do not change
    # while a block runs). Traceback objects, which it also takes, go straight through.
    def memoized(frame, context=1):
        if not isinstance(frame, types.FrameType):
            return getframeinfo(frame, context)
        key = (frame.f_code, frame.f_lasti, frame.f_lineno, context)
        info = memo.get(key)
        if info is None:
            info = memo[key] = getframeinfo(frame, context)
        return info

    return memoized


@contextlib.contextmanager
def memoized_frame_info():
    """Within the block, ``inspect.getframeinfo`` reuses its answer for a frame it has seen at the same
    instruction (Taichi's decorators ask it about the same import-system frame again and again)."""
    with patched_attributes([(inspect, "getframeinfo", _memo_frame_info(inspect.getframeinfo, {}))]):
        yield


def _patches() -> list[tuple[object, str, object]]:
    """(module, attribute, replacement) for this Taichi; empty where it is not 1.7."""
    import taichi as ti

    if tuple(ti.__version__[:2]) != (1, 7):
        return []
    from taichi.lang import kernel_impl
    from taichi.lang.ast import ast_transformer_utils

    context = ast_transformer_utils.ASTTransformerContext
    wanted = [(context, "get_pos_info"), (kernel_impl, "getsourcefile"), (kernel_impl, "getsourcelines")]
    if not all(hasattr(mod, name) for mod, name in wanted):
        return []
    return [
        (context, "get_pos_info", _memo_pos_info(context.get_pos_info, {})),
        (kernel_impl, "getsourcefile", _memo_per_object(kernel_impl.getsourcefile, {})),
        # (list of lines, first line number): each caller gets its own list
        (kernel_impl, "getsourcelines", _memo_per_object(kernel_impl.getsourcelines, {},
                                                         lambda r: (list(r[0]), r[1]))),
    ]


@contextlib.contextmanager
def patched_attributes(patches):
    """Within the block, each (object, attribute, value) of ``patches`` is set; on exit, however it
    exits, every attribute gets its old value back."""
    old = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, new in patches:
            setattr(mod, name, new)
        yield
    finally:
        for mod, name, value in old:
            setattr(mod, name, value)


@contextlib.contextmanager
def memoized_frontend():
    """Within the block, Taichi's frontend reuses its source-position strings and ti.funcs' source,
    and ``inspect.getframeinfo`` its answers (``memoized_frame_info``)."""
    patches = _patches()
    with patched_attributes(patches), memoized_frame_info():
        yield bool(patches)
