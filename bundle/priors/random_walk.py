"""WeakMedSAM random walk on the SAM prompt-affinity graph (docs/methods.md §5, steps 4 and 5).

The affinity of two pixels ``u`` and ``v`` of the affinity grid that lie less than ``radius`` apart is
``A_uv = exp(-|M_u - M_v|)``, with ``M`` the summed SAM prompt logits; ``A_uu = 1`` and every other entry is 0. The
transition matrix is ``T = D^-1 A^beta`` (element-wise power, ``D`` the row sums of ``A^beta``: rows of ``T`` sum to 1,
the formula as usually written; ``transition="row"``) or ``T = A^beta D^-1`` (columns sum to 1: what the authors' code
computes, ``A^beta / A^beta.sum(dim=1, keepdim=True)`` on a ``[B, N, N]`` matrix; ``transition="column"``), and the
walk repeats ``v <- minmax(T v)`` ``steps`` times, starting from the class activation maps. ``A`` is symmetric, so
the column sums are the row sums ``D``.

:func:`random_walk` never builds ``T``: the graph is a stencil (the same neighbour offsets at every pixel), so ``T v``
is a sum of shifted copies of ``v`` weighted by per-pixel affinities. Each undirected edge is stored once, for the
one-sided ("half-plane") offset of :func:`affinity_offsets`, and used for both directions. Memory is about
``len(affinity_offsets(radius)) + 4 C`` maps of ``H x W`` (34 offsets for radius 5), against ``(H W)^2`` for ``T``.
:func:`dense_transition` and :func:`dense_random_walk` are the literal dense-matrix version, a test reference for
small grids.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from monai.utils import look_up_option

__all__ = [
    "BORDER_MODES",
    "DENSE_MAX_PIXELS",
    "MINMAX_EPS",
    "TRANSITIONS",
    "affinity_offsets",
    "dense_random_walk",
    "dense_transition",
    "random_walk",
]

BORDER_MODES = ("all", "interior")
# "row": T = D^-1 A^beta (the usual formula); "column": T = A^beta D^-1 (the authors' code)
TRANSITIONS = ("row", "column")
# the authors' max_norm: (v - min + eps) / (max - min + eps), per class
MINMAX_EPS = 1e-6
# dense_random_walk holds one N x N float64 matrix: 2 GiB at this limit
DENSE_MAX_PIXELS = 128 * 128
# elements of the int64 pair-test temporaries of dense_random_walk per block of rows
_DENSE_BLOCK_ELEMENTS = 1 << 20


def affinity_offsets(radius: int) -> list[tuple[int, int]]:
    """One-sided neighbour offsets of the affinity graph.

    The offsets ``(dy, dx)`` with ``0 < dy^2 + dx^2 < radius^2`` in the half-plane ``dy > 0`` or (``dy = 0`` and
    ``dx > 0``); with their negatives they are all the neighbours of a pixel. This is the ``search_dist`` list of the
    PSA / AffinityNet ``get_indices_of_pairs`` that WeakMedSAM uses, in the same (lexicographic) order.

    Args:
        radius: neighbourhood radius (exclusive), at least 1; radius 5 gives 34 offsets (68 neighbours).

    Returns:
        ``(dy, dx)`` pairs sorted by ``dy`` then ``dx``; empty for radius 1.

    Raises:
        ValueError: when ``radius`` is not an integer of at least 1.
    """
    radius = _check_radius(radius)
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        offsets.extend((dy, dx) for dx in range(-radius + 1, radius) if dy * dy + dx * dx < radius * radius)
    return offsets


def _check_radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, numbers.Integral) or radius < 1:
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}.")
    return int(radius)


def _check_options(
    beta: float, steps: int, radius: int, border: str, transition: str = "row"
) -> tuple[float, int, int, str, str]:
    radius = _check_radius(radius)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}.")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}.")
    border = look_up_option(border, BORDER_MODES)
    return float(beta), int(steps), radius, border, look_up_option(transition, TRANSITIONS)


def _to_float64(x, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device, dtype=torch.float64)
    else:
        t = torch.from_numpy(np.asarray(x, dtype=np.float64)).to(device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite values (NaN or inf).")
    return t


def _check_logit_map(logit_map, device: torch.device) -> torch.Tensor:
    m = _to_float64(logit_map, "logit_map", device)
    if m.ndim != 2 or min(m.shape) < 1:
        raise ValueError(f"logit_map must be [H, W] with positive sizes, got shape {tuple(m.shape)}.")
    return m


def _check_inputs(logit_map, cams) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as float64 tensors on the device of ``cams`` (CPU for numpy): ``[H, W]`` and ``[C, H, W]``."""
    device = cams.device if isinstance(cams, torch.Tensor) else torch.device("cpu")
    m = _check_logit_map(logit_map, device)
    v = _to_float64(cams, "cams", device)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3:
        raise ValueError(f"cams must be [H, W] or [C, H, W], got shape {tuple(v.shape)}.")
    if v.shape[1:] != m.shape:
        raise ValueError(f"cams {tuple(v.shape)} and logit_map {tuple(m.shape)} must have the same [H, W].")
    return m, v


def _minmax(v: torch.Tensor) -> torch.Tensor:
    low = v.amin(dim=(-2, -1), keepdim=True)
    high = v.amax(dim=(-2, -1), keepdim=True)
    return (v - low + MINMAX_EPS) / (high - low + MINMAX_EPS)


def _source_box(height: int, width: int, dy: int, dx: int, radius: int, border: str) -> tuple[int, int, int, int]:
    """Rows ``[y0, y1)`` and columns ``[x0, x1)`` of the pixels ``u`` whose edge to ``u + (dy, dx)`` exists."""
    # "all": every pixel whose neighbour lies in the image
    y0, y1 = 0, height - dy
    x0, x1 = max(0, -dx), width - max(0, dx)
    if border == "interior":
        # get_indices_of_pairs: indices_from = full_indices[:-radius_floor, radius_floor:-radius_floor]
        floor = radius - 1
        y1 = min(y1, height - floor)
        x0, x1 = max(x0, floor), min(x1, width - floor)
    return y0, y1, x0, x1


def random_walk(
    logit_map,
    cams,
    beta: float = 4.0,
    steps: int = 4,
    radius: int = 5,
    border: str = "all",
    transition: str = "row",
):
    """Refine class activation maps by the WeakMedSAM random walk on the prompt-affinity graph.

    With ``M = logit_map`` and the neighbours of :func:`affinity_offsets` (both signs),
    ``A_uv = exp(-|M_u - M_v|)`` for neighbours, ``A_uu = 1``; ``D`` the row sums of ``A^beta``; ``v_0 = cams`` and
    ``steps`` times ``v <- T v`` followed by the authors' per-class min-max ``(v - min + 1e-6) / (max - min + 1e-6)``
    (their code applies it after every step, as here). The transition ``T`` (``transition``):

    - ``"row"``: ``T = D^-1 A^beta``, rows sum to 1 (each pixel takes the affinity-weighted mean of its neighbours):
      the formula as usually written.
    - ``"column"``: ``T = A^beta D^-1``, columns sum to 1 (each pixel spreads its value over its neighbours): what
      WeakMedSAM's code computes, ``A^beta / A^beta.sum(dim=1, keepdim=True)`` on a ``[B, N, N]`` matrix followed by
      ``bmm(T, v)``. They differ: after the default 4 steps on random maps (logits of scale 2, 16 x 16 and
      64 x 64 grids) the largest per-pixel difference is 0.4 to 0.55.

    Border rule (``border``):

    - ``"all"``: every pixel is linked to all its neighbours that lie in the image.
    - ``"interior"``: the authors' edges. Their ``get_indices_of_pairs(radius, size)`` (PSA / AffinityNet, used by
      WeakMedSAM's ``utils/affinity.py``) takes the "from" pixels as ``full_indices[:-(radius - 1),
      (radius - 1):-(radius - 1)]``: rows ``[0, H - radius + 1)`` (cropped at the bottom only, since every one-sided
      offset has ``dy >= 0``) and columns ``[radius - 1, W - radius + 1)``. The one-sided edge ``(u, u + d)`` exists
      iff ``u`` lies in that crop; the matrix is then symmetrised. So a pixel outside the crop keeps the edges that
      reach it from crop pixels, and two pixels of the border strips are never linked to each other.

    In both modes ``A`` is symmetric and every pixel has ``A_uu = 1``, so no row sum is 0.

    The work is done in float64 (the min-max divides by ``max - min``, which a step shrinks on small grids, so float32
    rounding would be amplified); memory is about ``len(affinity_offsets(radius)) + 4 C`` float64 maps of ``H x W``.

    Args:
        logit_map: ``[H, W]`` summed SAM prompt logits ``M`` on the affinity grid (numpy array or tensor).
        cams: ``[H, W]`` or ``[C, H, W]`` class activation maps on the same grid (numpy array or tensor).
        beta: exponent of the affinities (> 0); the authors use 4.
        steps: number of walk steps (>= 0); 0 returns ``cams`` unchanged (as float32).
        radius: neighbourhood radius (exclusive): offsets with ``dy^2 + dx^2 < radius^2``.
        border: ``"all"`` or ``"interior"`` (see above).
        transition: ``"row"`` or ``"column"`` (see above).

    Returns:
        ``[C, H, W]`` float32 refined maps: a numpy array for numpy ``cams``, else a tensor on the device of ``cams``.

    Raises:
        ValueError: for shapes that are not ``[H, W]`` / ``[C, H, W]`` or whose ``H, W`` differ, non-finite inputs,
            ``radius < 1``, ``steps < 0``, ``beta <= 0`` or an unknown ``border`` / ``transition`` (naming the
            closest valid one).
    """
    beta, steps, radius, border, transition = _check_options(beta, steps, radius, border, transition)
    m, v = _check_inputs(logit_map, cams)
    height, width = m.shape
    edges = []
    degree = torch.ones_like(m)
    for dy, dx in affinity_offsets(radius):
        y0, y1, x0, x1 = _source_box(height, width, dy, dx, radius, border)
        if y1 <= y0 or x1 <= x0:
            continue
        src = (slice(y0, y1), slice(x0, x1))
        dst = (slice(y0 + dy, y1 + dy), slice(x0 + dx, x1 + dx))
        # exp(-|dM|) ** beta without the intermediate: one exp per undirected edge
        weight = torch.exp(-beta * (m[src] - m[dst]).abs())
        degree[src] += weight
        degree[dst] += weight
        edges.append((src, dst, weight))
    inv_degree = degree.reciprocal_()
    for _ in range(steps):
        # A^beta D^-1 v: divide by the degree before the affinity sum; D^-1 A^beta v: after it
        v_in = v * inv_degree if transition == "column" else v
        out = v_in.clone()  # A_uu ** beta = 1
        for src, dst, weight in edges:
            out[(slice(None), *src)].addcmul_(weight, v_in[(slice(None), *dst)])
            out[(slice(None), *dst)].addcmul_(weight, v_in[(slice(None), *src)])
        v = _minmax(out if transition == "column" else out.mul_(inv_degree))
    v = v.to(torch.float32)
    return v if isinstance(cams, torch.Tensor) else v.cpu().numpy()


def dense_transition(
    logit_map, beta: float = 4.0, radius: int = 5, border: str = "all", transition: str = "row"
) -> np.ndarray:
    """The dense transition matrix ``T`` of :func:`random_walk` (``N = H W``), small grids only.

    It tests pixel pairs directly (not through :func:`affinity_offsets`): ``u`` and ``v`` are linked when
    ``0 < |u - v|^2 < radius^2``; for ``border="interior"`` the pair's "from" pixel (the one from which the other lies
    in the half-plane ``dy > 0`` or ``dy = 0, dx > 0``) must also lie in rows ``[0, H - radius + 1)`` and columns
    ``[radius - 1, W - radius + 1)``. Pixels are numbered row by row. It is built in blocks of rows, each over the
    band of pixels within reach; memory is the ``8 N^2`` bytes of the result: 2 GiB at the limit
    ``N = DENSE_MAX_PIXELS = 128 * 128``.

    Args:
        logit_map: ``[H, W]`` summed SAM prompt logits (numpy array or tensor).
        beta: exponent of the affinities (> 0).
        radius: neighbourhood radius (exclusive).
        border: ``"all"`` or ``"interior"``.
        transition: ``"row"`` (``D^-1 A^beta``) or ``"column"`` (``A^beta D^-1``).

    Returns:
        float64 ``[N, N]`` numpy array whose rows (``"row"``) or columns (``"column"``) sum to 1.

    Raises:
        ValueError: for the invalid inputs of :func:`random_walk`, and when ``H W > DENSE_MAX_PIXELS`` (the message
            gives the memory the matrix would need).
    """
    beta, _, radius, border, transition = _check_options(beta, 0, radius, border, transition)
    m = _check_logit_map(logit_map, torch.device("cpu")).numpy()
    height, width = m.shape
    n = height * width
    if n > DENSE_MAX_PIXELS:
        raise ValueError(
            f"the dense random walk needs an N x N float64 matrix: {height} x {width} = {n} pixels would need "
            f"{8 * n * n / 2**30:.1f} GiB; it is limited to N <= {DENSE_MAX_PIXELS} pixels (use random_walk)."
        )
    ys, xs = np.divmod(np.arange(n), width)
    flat_m = m.reshape(-1)
    trans = np.zeros((n, n))
    # a block of r image rows is tested against the r + 2 (radius - 1) rows within reach
    rows_per_block = 1
    while (
        rows_per_block < height
        and (rows_per_block + 1) * (rows_per_block + 2 * radius - 1) * width * width <= _DENSE_BLOCK_ELEMENTS
    ):
        rows_per_block += 1
    for top in range(0, height, rows_per_block):
        bottom = min(height, top + rows_per_block)
        rows = slice(top * width, bottom * width)
        # pixels further than radius - 1 rows away are never linked
        cols = slice(max(0, top - radius + 1) * width, min(height, bottom + radius - 1) * width)
        dy = ys[None, cols] - ys[rows, None]
        dx = xs[None, cols] - xs[rows, None]
        linked = (dy * dy + dx * dx < radius * radius) & ((dy != 0) | (dx != 0))
        if border == "interior":
            forward = (dy > 0) | ((dy == 0) & (dx > 0))
            from_y = np.where(forward, ys[rows, None], ys[None, cols])
            from_x = np.where(forward, xs[rows, None], xs[None, cols])
            linked &= (from_y < height - radius + 1) & (from_x >= radius - 1) & (from_x < width - radius + 1)
        block = np.where(linked, np.exp(-np.abs(flat_m[rows, None] - flat_m[None, cols])), 0.0)
        block[np.arange(block.shape[0]), np.arange(rows.start, rows.stop) - cols.start] = 1.0
        block **= beta
        trans[rows, cols] = block / block.sum(axis=1, keepdims=True) if transition == "row" else block
    if transition == "column":
        trans /= trans.sum(axis=0, keepdims=True)
    return trans


def dense_random_walk(
    logit_map,
    cams,
    beta: float = 4.0,
    steps: int = 4,
    radius: int = 5,
    border: str = "all",
    transition: str = "row",
):
    """Reference of :func:`random_walk` with the dense ``N x N`` transition matrix (``N = H W``), small grids only.

    ``T`` comes from :func:`dense_transition` (float64, ``8 N^2`` bytes: 2 GiB at the limit ``N = 128 * 128``); each
    step is the matrix product ``T v`` followed by the per-class min-max.

    Args:
        logit_map: ``[H, W]`` summed SAM prompt logits (numpy array or tensor).
        cams: ``[H, W]`` or ``[C, H, W]`` class activation maps (numpy array or tensor).
        beta: exponent of the affinities (> 0).
        steps: number of walk steps (>= 0).
        radius: neighbourhood radius (exclusive).
        border: ``"all"`` or ``"interior"``.
        transition: ``"row"`` or ``"column"``.

    Returns:
        ``[C, H, W]`` float64 numpy array.

    Raises:
        ValueError: for the invalid inputs of :func:`random_walk`, and when ``H W > DENSE_MAX_PIXELS`` (the message
            gives the memory the matrix would need).
    """
    beta, steps, radius, border, transition = _check_options(beta, steps, radius, border, transition)
    m, v = _check_inputs(logit_map, cams)
    trans = dense_transition(m.cpu().numpy(), beta, radius, border, transition)
    v = v.cpu().numpy()
    out = v.reshape(v.shape[0], -1).T
    for _ in range(steps):
        out = trans @ out
        low, high = out.min(axis=0), out.max(axis=0)
        out = (out - low + MINMAX_EPS) / (high - low + MINMAX_EPS)
    return np.ascontiguousarray(out.T).reshape(v.shape)
