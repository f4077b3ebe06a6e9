"""Bounding volume hierarchy over a triangle soup: a binned-SAH build (numba) flattened into arrays
that the path tracer's Taichi kernels traverse with a small stack, plus the brute-force intersection
that every BVH answer is tested against.

Layout of the flattened tree (depth-first order, so an internal node's left child is the next node):

- ``node_lo``, ``node_hi``: (N, 3) float32 world-space bounds of each node.
- ``node_a``: (N,) int32 — internal node: index of the right child; leaf: first slot in ``tri_index``.
- ``node_b``: (N,) int32 — internal node: 0; leaf: number of triangles (>= 1).
- ``node_axis``: (N,) int32 split axis of an internal node (0, 1, 2); the traversal visits the child on
  the side the ray comes from first, so the closest hit shrinks ``t_max`` early.
- ``tri_index``: (T,) int32 permutation: leaf slots -> original triangle ids.

Triangle data for intersection is stored as ``v0``, ``e1 = v1 - v0``, ``e2 = v2 - v0`` (Möller–Trumbore).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LEAF = 4  # triangles per leaf at most (unless they cannot be separated), for one-by-one tests
BLOCK = 8  # the path tracer's leaves: up to BLOCK triangles, tested together in SIMD lanes
BLOCK_COST = 1.5  # SAH price of testing one block, in one-by-one triangle tests (see pathtracer.LEAF_MAX)
MAX_BLOCKS = 1 << 22  # blocks a scene may have (the kernels mask block indices to this range)
SAH_BINS = 16  # centroid bins per axis
TRAVERSAL_COST = 1.0  # SAH cost of visiting a node, in units of one triangle test
STACK_SIZE = 64  # traversal stack entries; the build never makes a deeper tree than this (see _build)
PYTHON_BUILD_MAX = 256  # build smaller scenes in plain Python: importing numba costs more than it saves


@dataclass(frozen=True)
class BVH:
    """A flattened BVH (see the module docstring for the meaning of each array)."""

    node_lo: np.ndarray
    node_hi: np.ndarray
    node_a: np.ndarray
    node_b: np.ndarray
    node_axis: np.ndarray
    tri_index: np.ndarray
    depth: int

    @property
    def num_nodes(self) -> int:
        return int(self.node_lo.shape[0])


def _surface_area(lo, hi) -> float:
    d0, d1, d2 = hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]
    if d0 < 0.0:
        return 0.0
    return 2.0 * (d0 * d1 + d1 * d2 + d2 * d0)


def _leaf_cost(count, width, block_cost):
    """SAH cost of intersecting ``count`` triangles tested ``width`` at a time (in triangle tests)."""
    return block_cost * ((count + width - 1) // width)


def _build(tri_lo, tri_hi, centroid, max_leaf, bins, max_depth, width, block_cost):
    """Binned SAH build. tri_lo, tri_hi, centroid: (T, 3) float64. Returns the flattened arrays.
    A leaf's triangles are tested ``width`` at a time for ``block_cost`` each (1, 1: one by one)."""
    n_tri = tri_lo.shape[0]
    cap = max(2 * n_tri - 1, 1)
    node_lo = np.empty((cap, 3), np.float64)
    node_hi = np.empty((cap, 3), np.float64)
    node_a = np.zeros(cap, np.int32)
    node_b = np.zeros(cap, np.int32)
    node_axis = np.zeros(cap, np.int32)
    idx = np.arange(n_tri).astype(np.int32)
    # work stack: (start, end, parent whose right child this is or -1, depth)
    st_start = np.empty(2 * max_depth + 8, np.int64)
    st_end = np.empty(2 * max_depth + 8, np.int64)
    st_parent = np.empty(2 * max_depth + 8, np.int64)
    st_depth = np.empty(2 * max_depth + 8, np.int64)
    sp = 0
    st_start[0], st_end[0], st_parent[0], st_depth[0] = 0, n_tri, -1, 0
    sp = 1
    n_nodes = 0
    tree_depth = 0
    bin_lo = np.empty((bins, 3), np.float64)
    bin_hi = np.empty((bins, 3), np.float64)
    bin_n = np.empty(bins, np.int64)
    right_area = np.empty(bins, np.float64)
    right_n = np.empty(bins, np.int64)
    while sp > 0:
        sp -= 1
        start, end, parent, depth = st_start[sp], st_end[sp], st_parent[sp], st_depth[sp]
        node = n_nodes  # allocated when popped: a left child is popped right after its parent
        n_nodes += 1
        if parent >= 0:
            node_a[parent] = node
        tree_depth = max(tree_depth, depth)
        lo = np.full(3, np.inf)
        hi = np.full(3, -np.inf)
        clo = np.full(3, np.inf)
        chi = np.full(3, -np.inf)
        for k in range(start, end):
            t = idx[k]
            for ax in range(3):
                lo[ax] = min(lo[ax], tri_lo[t, ax])
                hi[ax] = max(hi[ax], tri_hi[t, ax])
                clo[ax] = min(clo[ax], centroid[t, ax])
                chi[ax] = max(chi[ax], centroid[t, ax])
        node_lo[node] = lo
        node_hi[node] = hi
        count = end - start
        # Best split by the SAH over centroid bins on all three axes.
        best_cost, best_axis, best_bin = np.inf, -1, -1
        if count > 1 and depth < max_depth - 1:
            parent_area = _surface_area(lo, hi)
            for ax in range(3):
                extent = chi[ax] - clo[ax]
                if extent <= 1e-12 * max(1.0, abs(chi[ax])):
                    continue
                scale = bins / extent
                bin_lo[:] = np.inf
                bin_hi[:] = -np.inf
                bin_n[:] = 0
                for k in range(start, end):
                    t = idx[k]
                    b = min(int((centroid[t, ax] - clo[ax]) * scale), bins - 1)
                    bin_n[b] += 1
                    for c in range(3):
                        bin_lo[b, c] = min(bin_lo[b, c], tri_lo[t, c])
                        bin_hi[b, c] = max(bin_hi[b, c], tri_hi[t, c])
                # sweep from the right: area and count of bins b..bins-1
                rlo = np.full(3, np.inf)
                rhi = np.full(3, -np.inf)
                rn = 0
                for b in range(bins - 1, 0, -1):
                    rn += bin_n[b]
                    for c in range(3):
                        rlo[c] = min(rlo[c], bin_lo[b, c])
                        rhi[c] = max(rhi[c], bin_hi[b, c])
                    right_area[b] = _surface_area(rlo, rhi)
                    right_n[b] = rn
                llo = np.full(3, np.inf)
                lhi = np.full(3, -np.inf)
                ln = 0
                for b in range(0, bins - 1):  # split between bin b and b+1
                    ln += bin_n[b]
                    for c in range(3):
                        llo[c] = min(llo[c], bin_lo[b, c])
                        lhi[c] = max(lhi[c], bin_hi[b, c])
                    if ln == 0 or right_n[b + 1] == 0:
                        continue
                    left_cost = _surface_area(llo, lhi) * _leaf_cost(ln, width, block_cost)
                    right_cost = right_area[b + 1] * _leaf_cost(right_n[b + 1], width, block_cost)
                    cost = TRAVERSAL_COST + (left_cost + right_cost) / max(parent_area, 1e-30)
                    if cost < best_cost:
                        best_cost, best_axis, best_bin = cost, ax, b
        leaf_cost = float(_leaf_cost(count, width, block_cost))
        make_leaf = best_axis < 0 or (count <= max_leaf and leaf_cost <= best_cost)
        if make_leaf and count > max_leaf and depth < max_depth - 1:
            # Centroids coincide on every axis but there are too many triangles: split by index
            # so leaves stay small (rare: duplicated triangles).
            mid = (start + end) // 2
            node_axis[node] = 0
            node_b[node] = 0
            sp_r = sp
            st_start[sp_r], st_end[sp_r], st_parent[sp_r], st_depth[sp_r] = mid, end, node, depth + 1
            st_start[sp_r + 1], st_end[sp_r + 1], st_parent[sp_r + 1], st_depth[sp_r + 1] = start, mid, -1, depth + 1
            sp += 2
            continue
        if make_leaf:
            node_a[node] = start
            node_b[node] = count
            continue
        # partition idx[start:end] by bin
        extent = chi[best_axis] - clo[best_axis]
        scale = bins / extent
        i, j = start, end - 1
        while i <= j:
            b = min(int((centroid[idx[i], best_axis] - clo[best_axis]) * scale), bins - 1)
            if b <= best_bin:
                i += 1
            else:
                idx[i], idx[j] = idx[j], idx[i]
                j -= 1
        mid = i
        node_axis[node] = best_axis
        node_b[node] = 0
        # push right first so the left child is popped (and numbered) next
        st_start[sp], st_end[sp], st_parent[sp], st_depth[sp] = mid, end, node, depth + 1
        st_start[sp + 1], st_end[sp + 1], st_parent[sp + 1], st_depth[sp + 1] = start, mid, -1, depth + 1
        sp += 2
    return node_lo[:n_nodes], node_hi[:n_nodes], node_a[:n_nodes], node_b[:n_nodes], node_axis[:n_nodes], idx, tree_depth


_jitted: dict = {}


def _jit(name: str):
    """The numba-compiled version of one of this module's functions (numba imported on first use;
    compiled code cached on disk)."""
    if name not in _jitted:
        import numba

        g = globals()
        for helper in ("_surface_area", "_leaf_cost"):  # helpers are jitted before their callers resolve them
            if helper not in _jitted:
                _jitted[helper] = g[helper] = numba.njit(cache=True)(g[helper])
        _jitted[name] = numba.njit(cache=True)(g[name])
    return _jitted[name]


def build_bvh(positions: np.ndarray, max_leaf: int = MAX_LEAF, width: int = 1, block_cost: float = 1.0) -> BVH:
    """Build the BVH of a triangle soup.

    positions: (T, 3, 3) float triangle corners (world space, metres). T >= 1.
    max_leaf: triangles per leaf at most (unless they cannot be separated).
    width, block_cost: the SAH prices a leaf of n triangles at block_cost * ceil(n / width) triangle
        tests (a traversal that tests ``width`` triangles at once in SIMD lanes); 1, 1 = one by one.
    Bounds are rounded outwards to float32 so a float32 traversal never misses a triangle that
    touches its node's face.
    """
    p = np.asarray(positions, np.float64)
    if p.ndim != 3 or p.shape[1:] != (3, 3) or p.shape[0] == 0:
        raise ValueError(f"positions has shape {p.shape}; expected (T, 3, 3) with T >= 1")
    tri_lo, tri_hi = p.min(axis=1), p.max(axis=1)
    centroid = 0.5 * (tri_lo + tri_hi)
    build = _build if len(p) <= PYTHON_BUILD_MAX else _jit("_build")
    lo, hi, a, b, axis, idx, depth = build(tri_lo, tri_hi, centroid, max_leaf, SAH_BINS, STACK_SIZE - 1, width,
                                        float(block_cost))
    # outward rounding: float32 boxes that still contain the float64 ones. A bound at 0 would round
    # to +-1.4e-45, a denormal, and denormal arithmetic costs ~100x on x86 (a floor at y = 0 made
    # every ray 5x slower); below 1e-30 the bound moves out to +-1e-30 instead (a normal float).
    lo32 = np.nextafter(lo.astype(np.float32), np.float32(-np.inf))
    hi32 = np.nextafter(hi.astype(np.float32), np.float32(np.inf))
    lo32 = np.where(np.abs(lo32) < 1e-30, np.float32(-1e-30), lo32).astype(np.float32)
    hi32 = np.where(np.abs(hi32) < 1e-30, np.float32(1e-30), hi32).astype(np.float32)
    return BVH(lo32, hi32, a.astype(np.int32), b.astype(np.int32), axis.astype(np.int32), idx.astype(np.int32),
               int(depth))


def triangle_edges(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(v0, e1, e2), each (T, 3) float32: the corner and two edges Möller–Trumbore needs."""
    p = np.asarray(positions, np.float32)
    return p[:, 0].copy(), p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]


# --- reference: every triangle against every ray ------------------------------------------------
def intersect_brute_force(positions: np.ndarray, origins: np.ndarray, directions: np.ndarray,
                          t_max: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Closest hit of each ray against all triangles (both faces), in float64.

    positions: (T, 3, 3); origins, directions: (R, 3) (directions need not be unit).
    Returns t (R,) float64 (inf where nothing is hit within (0, t_max)) and tri (R,) int32 (-1).
    """
    p = np.asarray(positions, np.float64)
    v0, e1, e2 = p[:, 0], p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    o = np.asarray(origins, np.float64)
    d = np.asarray(directions, np.float64)
    t_out = np.full(len(o), np.inf)
    tri_out = np.full(len(o), -1, np.int32)
    for r in range(len(o)):
        pvec = np.cross(d[r], e2)  # (T, 3)
        det = np.einsum("ij,ij->i", e1, pvec)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            s = o[r] - v0
            u = np.einsum("ij,ij->i", s, pvec) * inv
            q = np.cross(s, e1)
            v = (q @ d[r]) * inv
            t = np.einsum("ij,ij->i", e2, q) * inv
        ok = (det != 0) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0) & (t < t_max)
        if ok.any():
            t_ok = np.where(ok, t, np.inf)
            k = int(np.argmin(t_ok))
            t_out[r], tri_out[r] = t_ok[k], k
    return t_out, tri_out


# --- the same traversal as the Taichi kernel, in numba (for tests and tools) --------------------
def _traverse(node_lo, node_hi, node_a, node_b, node_axis, tri_index, v0, e1, e2, origins, directions, t_max):
    n = origins.shape[0]
    t_out = np.full(n, np.inf)
    tri_out = np.full(n, -1, np.int32)
    stack = np.empty(STACK_SIZE, np.int32)
    for r in range(n):
        o = origins[r]
        d = directions[r]
        inv = np.empty(3)
        for c in range(3):
            inv[c] = 1.0 / d[c] if d[c] != 0.0 else np.copysign(np.inf, d[c])
        best_t = t_max
        best = -1
        sp = 0
        node = 0
        while True:
            # slab test against this node's box
            t0, t1 = 0.0, best_t
            for c in range(3):
                ta = (node_lo[node, c] - o[c]) * inv[c]
                tb = (node_hi[node, c] - o[c]) * inv[c]
                if ta > tb:
                    ta, tb = tb, ta
                t0 = max(t0, ta)
                t1 = min(t1, tb)
            if t0 <= t1:
                if node_b[node] > 0:
                    for k in range(node_a[node], node_a[node] + node_b[node]):
                        t = tri_index[k]
                        px = d[1] * e2[t, 2] - d[2] * e2[t, 1]
                        py = d[2] * e2[t, 0] - d[0] * e2[t, 2]
                        pz = d[0] * e2[t, 1] - d[1] * e2[t, 0]
                        det = e1[t, 0] * px + e1[t, 1] * py + e1[t, 2] * pz
                        if det == 0.0:
                            continue
                        idet = 1.0 / det
                        sx, sy, sz = o[0] - v0[t, 0], o[1] - v0[t, 1], o[2] - v0[t, 2]
                        u = (sx * px + sy * py + sz * pz) * idet
                        if u < 0.0 or u > 1.0:
                            continue
                        qx = sy * e1[t, 2] - sz * e1[t, 1]
                        qy = sz * e1[t, 0] - sx * e1[t, 2]
                        qz = sx * e1[t, 1] - sy * e1[t, 0]
                        v = (d[0] * qx + d[1] * qy + d[2] * qz) * idet
                        if v < 0.0 or u + v > 1.0:
                            continue
                        tt = (e2[t, 0] * qx + e2[t, 1] * qy + e2[t, 2] * qz) * idet
                        if 0.0 < tt < best_t:
                            best_t, best = tt, t
                else:
                    near, far = node + 1, node_a[node]
                    if d[node_axis[node]] < 0.0:
                        near, far = far, near
                    stack[sp] = far
                    sp += 1
                    node = near
                    continue
            if sp == 0:
                break
            sp -= 1
            node = stack[sp]
        if best >= 0:
            t_out[r], tri_out[r] = best_t, best
    return t_out, tri_out


def intersect_bvh(bvh: BVH, positions: np.ndarray, origins: np.ndarray, directions: np.ndarray,
                  t_max: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Closest hit of each ray through the BVH (the kernels' traversal order, in float64).

    Same arguments and results as ``intersect_brute_force``.
    """
    p = np.asarray(positions, np.float64)
    v0, e1, e2 = p[:, 0].copy(), p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    return _jit("_traverse")(bvh.node_lo.astype(np.float64), bvh.node_hi.astype(np.float64), bvh.node_a, bvh.node_b,
                     bvh.node_axis, bvh.tri_index, v0, e1, e2, np.asarray(origins, np.float64),
                     np.asarray(directions, np.float64), float(t_max))
