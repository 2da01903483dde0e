"""Image writers for MONAI's ``SaveImage`` / ``SaveImaged`` that never leave a half-written output.

MONAI's writers save straight to the output name, so an inference run killed (or out of disk space) while writing
left a truncated ``*_seg.nii.gz`` that looks like a result. Pass ``writer="bundle.data.writers.AtomicNibabelWriter"``
to ``SaveImaged``: the file is written under a temporary name and renamed into place (:mod:`bundle.atomic`).
"""

from __future__ import annotations

from monai.config import PathLike
from monai.data import NibabelWriter

from bundle.atomic import atomic_path

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """:class:`monai.data.NibabelWriter` writing through a temporary file and an atomic rename."""

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs):
        """Write the NIfTI to a temporary name next to ``filename``, then rename it to ``filename``."""
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)
