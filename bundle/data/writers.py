"""Image writers that never leave a half-written output, and the way back from the RAS grid to a file's own grid.

MONAI's writers save straight to the output name, so an inference run killed (or out of disk space) while writing
left a truncated ``*_seg.nii.gz`` that looks like a result. Pass ``writer="bundle.data.writers.AtomicNibabelWriter"``
to ``SaveImaged``: the file is written under a temporary name and renamed into place (:mod:`bundle.atomic`).
"""

from __future__ import annotations

import numpy as np
from monai.config import PathLike
from monai.data import NibabelWriter
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from bundle.atomic import atomic_path

__all__ = ["AtomicNibabelWriter", "to_file_grid"]


def to_file_grid(array: np.ndarray, oriented_affine, file_affine) -> np.ndarray:
    """A ``[H, W, D]`` array in the RAS-oriented grid back to the voxel order of the file it was loaded from."""
    transform = ornt_transform(io_orientation(np.asarray(oriented_affine, np.float64)),
                               io_orientation(np.asarray(file_affine, np.float64)))
    return np.ascontiguousarray(apply_orientation(array, transform))


class AtomicNibabelWriter(NibabelWriter):
    """:class:`monai.data.NibabelWriter` writing through a temporary file and an atomic rename."""

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs):
        """Write the NIfTI to a temporary name next to ``filename``, then rename it to ``filename``."""
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)
