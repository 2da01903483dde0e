"""How well a mask generator's masks cover the labelled structures of a slice (``scripts/prior_quality.py``).

SAM priors help a segmentation network only if SAM's masks follow the anatomy. For every labelled structure on a
slice (a region of the dataset: BraTS whole tumour, LiTS liver, ...), the *coverage* is the Dice of the single mask
that matches it best: 1 means one of the masks is the structure, 0 that no mask touches it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bundle.workflows.common.seg_metrics import dice

__all__ = ["structure_coverage", "coverage_summary", "prior_agreement"]


def structure_coverage(
    records: Sequence[Mapping], label: np.ndarray, regions: Mapping[str, Sequence[int]], min_pixels: int = 10
) -> dict[str, float]:
    """Best-matching mask Dice of every region present on one ``[H, W]`` label slice.

    Args:
        records: the slice's mask records (``segmentation``: bool ``[H, W]``).
        label: integer label slice.
        regions: region name -> the label values it unites.
        min_pixels: regions smaller than this on the slice are not scored (a few boundary voxels of a structure
            say nothing about the generator).

    Returns:
        region name -> best Dice (0.0 without masks), for the regions present.
    """
    out = {}
    for name, values in regions.items():
        target = np.isin(label, list(values))
        if int(target.sum()) < min_pixels:
            continue
        out[name] = max((dice(r["segmentation"], target) for r in records), default=0.0)
    return out


def coverage_summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, quartiles and the fractions of structures covered at Dice >= 0.5 and >= 0.8."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "q1": float(q1), "median": float(median), "q3": float(q3),
            "at_least_0.5": float((v >= 0.5).mean()), "at_least_0.8": float((v >= 0.8).mean())}


def prior_agreement(reference: Sequence, test: Sequence) -> tuple[float, float]:
    """How closely two pipelines' SAMAug priors agree, over the same slices (the benchmarks' agreement figures).

    Args:
        reference, test: per slice, the ``(segmentation prior, boundary prior)`` pair of ``samaug_prior_maps``.

    Returns:
        ``(Pearson of the segmentation priors pooled over all slices' pixels, Dice of the boundary priors pooled the
        same way)``; the Pearson is NaN when either prior is constant (no mask anywhere).
    """
    s_ref, s_test = (np.concatenate([p[0].ravel() for p in x]).astype(np.float64) for x in (reference, test))
    pearson = float("nan") if s_ref.std() == 0 or s_test.std() == 0 else float(np.corrcoef(s_ref, s_test)[0, 1])
    b_ref, b_test = (np.concatenate([p[1].ravel() for p in x]) > 0 for x in (reference, test))
    return pearson, dice(b_ref, b_test)
