"""Tests of bundle.priors.random_walk: the stencil walk against the dense reference, the graph, memory, errors."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.priors.random_walk import (
    DENSE_MAX_PIXELS,
    affinity_offsets,
    dense_random_walk,
    dense_transition,
    random_walk,
)

ROOT = Path(__file__).resolve().parents[2]
GRIDS = [(7, 9), (12, 12), (16, 20)]
OPTIONS = list(itertools.product(("all", "interior"), (2, 3, 5), (1.0, 4.0), (0, 1, 4)))


def _inputs(shape, classes, seed):
    rng = np.random.default_rng(seed)
    # logits of a few units, as summed SAM logits are: affinities spread over (0, 1], none all 1 or all 0
    logits = rng.normal(scale=2.0, size=shape)
    cams = rng.random((classes, *shape))
    return logits, cams


@pytest.mark.parametrize("shape", GRIDS)
@pytest.mark.parametrize("border, radius, beta, steps", OPTIONS)
def test_stencil_matches_dense(shape, border, radius, beta, steps):
    for classes, seed in ((1, 0), (3, 1)):
        logits, cams = _inputs(shape, classes, seed)
        expected = dense_random_walk(logits, cams, beta, steps, radius, border)
        out_np = random_walk(logits, cams, beta, steps, radius, border)
        out_t = random_walk(
            torch.from_numpy(logits).float(), torch.from_numpy(cams).float(), beta, steps, radius, border
        )
        assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32 and out_np.shape == (classes, *shape)
        assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32 and out_t.shape == (classes, *shape)
        np.testing.assert_allclose(out_np, expected, rtol=0, atol=1e-5)
        # float32 inputs differ from the float64 ones by their rounding only
        np.testing.assert_allclose(out_t.numpy(), expected, rtol=0, atol=1e-5)


def _authors_reference(logits, cams, beta, steps, radius, border, transition):
    """The walk with a dense ``[N, N]`` matrix, written here from the definitions (independent of the library).

    ``A^beta`` is filled from :func:`affinity_offsets`: the one-sided edge ``(u, u + d)`` exists when ``u + d`` lies
    in the image and, for ``border="interior"``, ``u`` lies in rows ``[0, H - radius + 1)`` and columns
    ``[radius - 1, W - radius + 1)``; it is stored both ways and ``A_uu = 1``. ``"column"`` is the authors' code:
    ``trans = A^beta / A^beta.sum(dim=1, keepdim=True)`` on ``[1, N, N]`` (the sum over rows: each column divided by
    its sum), then ``bmm(trans, v)``; ``"row"`` divides each row by its sum. Each step ends with the per-class
    min-max.
    """
    height, width = logits.shape
    n = height * width
    a = np.eye(n)
    for y in range(height):
        for x in range(width):
            if border == "interior" and not (y < height - radius + 1 and radius - 1 <= x < width - radius + 1):
                continue
            for dy, dx in affinity_offsets(radius):
                if 0 <= y + dy < height and 0 <= x + dx < width:
                    u, w = y * width + x, (y + dy) * width + x + dx
                    a[u, w] = a[w, u] = np.exp(-abs(logits[y, x] - logits[y + dy, x + dx])) ** beta
    batched = a[None]
    if transition == "column":
        trans = batched / batched.sum(axis=1, keepdims=True)
    else:
        trans = batched / batched.sum(axis=2, keepdims=True)
    v = cams.reshape(cams.shape[0], n).T[None]  # [1, N, C]
    for _ in range(steps):
        v = trans @ v
        low, high = v.min(axis=1, keepdims=True), v.max(axis=1, keepdims=True)
        v = (v - low + 1e-6) / (high - low + 1e-6)
    return v[0].T.reshape(cams.shape)


@pytest.mark.parametrize("transition, border", [("column", "interior"), ("row", "all"), ("column", "all")])
def test_walk_matches_the_dense_reference_of_each_transition(transition, border):
    for shape, beta, classes in itertools.product([(7, 9), (16, 16), (12, 20)], (1.0, 4.0), (1, 3)):
        logits, cams = _inputs(shape, classes, seed=shape[1] + classes)
        for steps in (0, 1, 4):
            expected = _authors_reference(logits, cams, beta, steps, 5, border, transition)
            out = random_walk(logits, cams, beta, steps, 5, border, transition=transition)
            np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5, err_msg=f"{shape} {beta} {classes} {steps}")
            # the library's dense reference agrees too
            np.testing.assert_allclose(
                dense_random_walk(logits, cams, beta, steps, 5, border, transition), expected, rtol=0, atol=1e-10
            )


def test_the_two_transitions_differ_and_row_is_the_default():
    # guards the reference test above against a transition option that changes nothing
    logits, cams = _inputs((16, 16), 2, 7)
    row = random_walk(logits, cams, border="interior")
    np.testing.assert_array_equal(row, random_walk(logits, cams, border="interior", transition="row"))
    column = random_walk(logits, cams, border="interior", transition="column")
    assert np.abs(column - row).max() > 0.1


@pytest.mark.parametrize("border", ["all", "interior"])
def test_dense_column_transition_is_the_row_one_transposed(border):
    # A is symmetric, so A^beta D^-1 = (D^-1 A^beta)^T: columns sum to 1
    logits, _ = _inputs((9, 11), 1, 5)
    row = dense_transition(logits, beta=4.0, radius=3, border=border)
    column = dense_transition(logits, beta=4.0, radius=3, border=border, transition="column")
    np.testing.assert_allclose(column.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(column, row.T, rtol=1e-12, atol=1e-15)


def test_walk_changes_the_maps_and_normalises_them():
    # guards the equality test above against a trivial pass (e.g. both returning the input)
    logits, cams = _inputs((12, 12), 2, 3)
    out = random_walk(logits, cams)
    assert np.abs(out - cams).max() > 0.1
    np.testing.assert_allclose(out.max(axis=(1, 2)), 1.0, atol=1e-6)
    np.testing.assert_allclose(out.min(axis=(1, 2)), 0.0, atol=1e-5)


def test_steps_zero_returns_cams_as_float32():
    logits, cams = _inputs((5, 6), 1, 0)
    out = random_walk(logits, cams[0], steps=0)
    assert out.shape == (1, 5, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out, cams.astype(np.float32))


def test_two_dimensional_cams_give_one_class():
    logits, cams = _inputs((8, 8), 1, 0)
    np.testing.assert_array_equal(random_walk(logits, cams[0]), random_walk(logits, cams))


def test_offsets_radius_5():
    offsets = affinity_offsets(5)
    assert len(offsets) == 34 and len(set(offsets)) == 34
    assert offsets == sorted(offsets)
    assert all(0 < dy * dy + dx * dx < 25 for dy, dx in offsets)
    # one per undirected neighbour pair: the half-plane dy > 0 or (dy = 0, dx > 0)
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in offsets)
    full = {(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6) if 0 < dy * dy + dx * dx < 25}
    assert set(offsets) | {(-dy, -dx) for dy, dx in offsets} == full and len(full) == 68


def test_offsets_small_radii():
    assert affinity_offsets(1) == []
    assert affinity_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]


@pytest.mark.parametrize("border", ["all", "interior"])
@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_dense_transition_is_a_normalised_symmetric_affinity(border, beta):
    logits, _ = _inputs((9, 11), 1, 5)
    trans = dense_transition(logits, beta=beta, radius=3, border=border)
    np.testing.assert_allclose(trans.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # A_uu ** beta = 1, so the diagonal of T is 1 / D and D T = A ** beta
    affinity = trans / np.diag(trans)[:, None]
    np.testing.assert_allclose(np.diag(affinity), 1.0)
    np.testing.assert_allclose(affinity, affinity.T, rtol=1e-12, atol=1e-15)
    m = logits.reshape(-1)
    linked = (affinity > 0) & ~np.eye(m.size, dtype=bool)
    u, v = np.nonzero(linked)
    np.testing.assert_allclose(affinity[u, v], np.exp(-np.abs(m[u] - m[v])) ** beta, rtol=1e-12)


def _linked(trans, width, a, b):
    return trans[a[0] * width + a[1], b[0] * width + b[1]] > 0


def test_border_rule():
    width = 12
    trans_all = dense_transition(np.zeros((12, width)), radius=3, border="all")
    trans_int = dense_transition(np.zeros((12, width)), radius=3, border="interior")
    # each neighbour pair of the grid is linked in "all"
    assert trans_all[trans_all > 0].size == 12 * width + 2 * sum(
        (12 - dy) * (width - abs(dx)) for dy, dx in affinity_offsets(3)
    )
    # "interior": the one-sided edge (u, u + d) needs u in rows [0, 10), columns [2, 10)
    cases = [
        ((0, 0), (0, 1), False),  # from (0, 0): column 0 < 2
        ((0, 2), (0, 3), True),  # from (0, 2): top row is kept (the crop is at the bottom only)
        ((0, 2), (1, 0), True),  # from (0, 2), offset (1, -2): reaches into the left strip
        ((1, 0), (0, 2), True),  # the same edge, seen from the other end
        ((11, 5), (11, 6), False),  # from (11, 5): row 11 >= 10
        ((9, 5), (11, 5), True),  # from (9, 5): reaches into the bottom strip
        ((5, 10), (5, 11), False),  # from (5, 10): column 10 >= 10
        ((5, 9), (5, 11), True),
        ((10, 0), (11, 0), False),  # two strip pixels are never linked
    ]
    for a, b, expected in cases:
        assert _linked(trans_int, width, a, b) == expected, (a, b)
        assert _linked(trans_all, width, a, b)


def test_constant_logits_smooth_the_cam():
    rng = np.random.default_rng(0)
    noise = rng.random((1, 32, 32))
    out = random_walk(np.zeros((32, 32)), noise)

    def roughness(v):
        v = (v - v.min()) / (v.max() - v.min())
        return np.abs(np.diff(v, axis=-1)).mean()

    # uniform affinities: each step averages about 80 neighbours, so the walk is a strong low-pass filter
    assert roughness(noise) > 0.3
    assert roughness(out) < roughness(noise) / 10


def test_sharp_logit_edge_stops_the_walk():
    shape = (32, 32)
    cam = np.zeros((1, *shape))
    cam[:, 8:14, 10:14] = 1.0  # 2 pixels left of the edge at column 16
    edge = np.zeros(shape)
    edge[:, 16:] = 20.0  # affinity across: exp(-20) ** 4 ~ 2e-35
    flat = random_walk(np.zeros(shape), cam)[0]
    walled = random_walk(edge, cam)[0]
    # without the edge a fifth of the mass crosses and the right half lights up
    assert flat[:, 16:].sum() / flat.sum() > 0.15 and flat[:, 16:].max() > 0.5
    # with it, the right half keeps the min-max floor (eps / (range + eps) ~ 1e-6) and no more
    assert walled[:, 16:].sum() / walled.sum() < 1e-5 and walled[:, 16:].max() < 1e-5
    assert walled[:, :16].max() == pytest.approx(1.0)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import numpy as np, torch
    torch.set_num_threads(1)
    from bundle.priors.random_walk import random_walk

    def status_bytes(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

    rng = np.random.default_rng(0)
    random_walk(rng.normal(size=(16, 16)), rng.random((1, 16, 16)))  # load kernels and thread pools
    logits, cams = rng.normal(size=(256, 256)), rng.random((1, 256, 256)).astype(np.float32)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
    except OSError:
        pass  # then VmHWM counts from the exec: a looser upper bound
    before = status_bytes("VmRSS")
    out = random_walk(logits, cams)
    growth = status_bytes("VmHWM") - before
    assert out.shape == (1, 256, 256) and np.isfinite(out).all()
    print(growth)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_256_grid_memory_is_linear():
    # In a fresh process, the growth of the peak resident size (VmHWM, reset just before) during the call: the walk's
    # own peak, including torch's allocations, which tracemalloc does not see (ru_maxrss would not do: a child starts
    # with its parent's resident size at the fork). The stencil needs about 40 float64 maps of 256 x 256 (20 MiB);
    # the dense T would need 32 GiB.
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.strip().splitlines()[-1])
    assert 0 < growth < 128 * 2**20, f"peak grew by {growth / 2**20:.0f} MiB"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, cams = _inputs((64, 64), 2, 0)
    out = random_walk(torch.from_numpy(logits).cuda(), torch.from_numpy(cams).cuda())
    assert out.device.type == "cuda" and out.dtype == torch.float32
    np.testing.assert_allclose(out.cpu().numpy(), random_walk(logits, cams), rtol=0, atol=1e-6)


Z = np.zeros((4, 5))
BAD_INPUTS = [
    (Z, np.zeros((1, 4, 6)), {}, "same \\[H, W\\]"),
    (np.zeros((1, 4, 5)), np.zeros((1, 4, 5)), {}, "logit_map must be \\[H, W\\]"),
    (Z, np.zeros((1, 1, 4, 5)), {}, "cams must be"),
    (np.zeros((0, 5)), np.zeros((1, 0, 5)), {}, "positive sizes"),
    (np.full((4, 5), np.nan), Z, {}, "logit_map has non-finite"),
    (Z, np.full((1, 4, 5), np.inf), {}, "cams has non-finite"),
    (Z, Z, {"radius": 0}, "radius must be an integer >= 1"),
    (Z, Z, {"radius": 2.5}, "radius must be an integer >= 1"),
    (Z, Z, {"steps": -1}, "steps must be an integer >= 0"),
    (Z, Z, {"beta": 0.0}, "beta must be a finite number > 0"),
    (Z, Z, {"beta": float("inf")}, "beta must be a finite number > 0"),
    (Z, Z, {"border": "interor"}, "interior"),  # look_up_option names the closest option
    (Z, Z, {"transition": "colum"}, "column"),
    (Z, Z, {"transition": "rows"}, "row"),
]


@pytest.mark.parametrize("logit_map, cams, options, message", BAD_INPUTS)
@pytest.mark.parametrize("fn", [random_walk, dense_random_walk])
def test_bad_inputs(fn, logit_map, cams, options, message):
    with pytest.raises(ValueError, match=message):
        fn(logit_map, cams, **options)


def test_dense_refuses_large_grids_with_the_memory_it_needs():
    side = int(DENSE_MAX_PIXELS**0.5) + 1
    with pytest.raises(ValueError, match=r"would need \d+\.\d GiB"):
        dense_random_walk(np.zeros((side, side)), np.zeros((1, side, side)))
    with pytest.raises(ValueError, match="32.0 GiB"):
        dense_transition(np.zeros((256, 256)))
