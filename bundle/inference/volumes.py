"""Load one batch-inference input as the model's image: ``[C, I, J, K]`` float32 with its voxel-to-RAS affine, after
checking that it is what the model takes.

:func:`check_input` reads headers only and runs on every input before any work starts; what it read (a DICOM series'
checked geometry, the files' headers and colour check) goes with the input to :func:`load_input`, which reads the
voxels once (:func:`bundle.data.checks.check_image_file`, or the series' pixels) and checks only what needs them:
shape and channels as loaded, one grid, finite values. Both fail with one :class:`~bundle.errors.InputError` naming the
file and what it is: a 4D file (time series) or an RGB image where one grey-scale 3D volume is expected, a
channel count the model was not trained with, modality files on different grids, NaN or infinite voxels. A single
2D image (a 2D NIfTI, one DICOM slice) is run as a one-slice volume; :attr:`LoadedInput.spatial_shape` keeps the
shape it was loaded with, so the output is written in that shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from bundle.data.case_ids import SOURCE_FILES_KEY
from bundle.data.checks import check_image_file
from bundle.data.dicom_input import check_dicom_series, read_dicom_volume
from bundle.data.headers import read_header
from bundle.errors import InputError
from bundle.inference.sources import InputSource

__all__ = ["LoadedInput", "check_input", "load_input"]

_AFFINE_ATOL = 1e-3


@dataclass
class LoadedInput:
    """An input ready for the model.

    Attributes:
        image: ``[C, I, J, K]`` float32 ``MetaTensor`` (affine: voxel to RAS, the input's own axis order).
        affine: the 4 x 4 voxel-to-RAS affine of the file (also the output's).
        spatial_shape: the shape the input was loaded with (2 axes for a 2D image), the output's shape.
    """

    image: MetaTensor
    affine: np.ndarray
    spatial_shape: tuple[int, ...]


def _rgb_problem(path: str) -> str | None:
    if not path.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        dtype = nib.load(path).get_data_dtype()
    except Exception:  # noqa: BLE001 - unreadable: check_image_file names the reason
        return None
    if dtype.fields:
        return (f"is a colour image (NIfTI {'RGBA' if len(dtype.fields) == 4 else 'RGB'} voxels); a grey-scale CT/MR "
                "volume is expected")
    return None


def _file_volume(path: str, colour_checked: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``(array [I, J, K, T], affine, loaded spatial shape)`` of one image file; T = 1 for a 3D (or 2D) image.
    ``colour_checked``: :func:`check_input` found it grey-scale from its header (not read again)."""
    problem = None if colour_checked else _rgb_problem(path)
    if problem:
        raise InputError(path, problem)
    image = check_image_file(path)
    data = np.asarray(image.as_tensor().numpy(), np.float32)
    spatial = tuple(int(s) for s in np.asarray(image.meta.get("spatial_shape", data.shape[:3])).ravel())
    affine = np.asarray(image.affine, np.float64)
    if affine.shape != (4, 4):
        full = np.eye(4)
        n = affine.shape[0] - 1
        full[:n, :n], full[:n, 3] = affine[:n, :n], affine[:n, n]
        affine = full
    rank, extra = len(spatial), data.ndim - len(spatial)
    if rank == 2 and extra == 0:
        return data[:, :, None, None], affine, spatial
    if rank != 3 or extra not in (0, 1):
        raise InputError(path, f"has shape {tuple(data.shape)}: a {rank}D image with {extra} non-spatial axes; a 3D "
                               "volume (or a 2D slice) is expected")
    if extra == 0:
        data = data[..., None]
    elif data.shape[:3] != spatial:  # the reader put the extra axis first
        data = np.moveaxis(data, 0, -1)
    return data, affine, spatial


def _check_volumes(path: str, volumes: int, shape: tuple[int, ...], n_files: int, channel_names: Sequence[str]) -> None:
    """A file holding ``volumes`` 3D volumes fits an input of ``n_files`` files for a model of ``channel_names``."""
    channels, names = len(channel_names), ", ".join(channel_names)
    if n_files > 1:
        if volumes != 1:
            raise InputError(path, f"is a 4D image of {volumes} volumes; each modality file must hold one 3D volume")
        return
    if volumes == channels:
        return
    if volumes > 1 and channels == 1:
        raise InputError(path, f"is a 4D image of {volumes} volumes (shape {shape}); the model expects one 3D volume "
                               f"({names})")
    raise InputError(path, f"holds {volumes} volume(s) (shape {shape}); the model expects {channels} channels "
                           f"({names}): give a datalist entry listing {channels} files or a 4D file of {channels} "
                           "volumes")


def _check_file_count(source: InputSource, channel_names: Sequence[str]) -> None:
    if len(source.files) > 1 and len(source.files) != len(channel_names):
        raise InputError(source.files[0], f"the entry lists {len(source.files)} image files; the model expects "
                                          f"{len(channel_names)} channels ({', '.join(channel_names)})")


def _check_grid(path: str, shape, affine, first: str, first_shape, first_affine) -> None:
    if tuple(shape) != tuple(first_shape) or not np.allclose(affine, first_affine, atol=_AFFINE_ATOL):
        raise InputError(path, f"is on another grid than {first} (shape {tuple(shape)} vs {tuple(first_shape)}, or "
                               "affines differ): the modalities of a case must share one grid")


def _dicom_channels(source: InputSource, channel_names: Sequence[str]) -> None:
    if len(channel_names) != 1:
        raise InputError(source.label, f"a DICOM series is one grey-scale volume; the model expects "
                                       f"{len(channel_names)} channels ({', '.join(channel_names)}): give a datalist "
                                       "entry listing one NIfTI file per channel")


def check_input(source: InputSource, channel_names: Sequence[str]) -> None:
    """The checks that need no voxels (headers only: cheap enough to run on every input before any work starts):
    the file is complete, a grey-scale image of the dimensions and channel count the model takes, modality files on
    one grid; for DICOM series the geometry (missing slices, orientations, spacing) and colour.

    Raises:
        InputError: names the file (or series) and the problem.
    """
    if source.kind == "dicom":
        _dicom_channels(source, channel_names)
        source.checked = check_dicom_series(source.series)
        return
    _check_file_count(source, channel_names)
    first, headers = None, []
    for path in source.files:
        problem = _rgb_problem(path)
        if problem:
            raise InputError(path, problem)
        header = read_header(path)
        rank = len(header.spatial_shape)
        if rank not in (2, 3) or (rank == 2 and header.channels != 1):
            raise InputError(path, f"has shape {header.shape}: a 3D volume (or a 2D slice) is expected")
        _check_volumes(path, header.channels, header.shape, len(source.files), channel_names)
        if first is None:
            first = header
        else:
            _check_grid(path, header.spatial_shape, header.affine, first.path, first.spatial_shape, first.affine)
        headers.append(header)
    source.checked = headers


def _image_input(source: InputSource, channel_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, tuple]:
    _check_file_count(source, channel_names)
    arrays, affine, spatial = [], None, None
    for path in source.files:
        data, file_affine, file_spatial = _file_volume(path, colour_checked=source.checked is not None)
        _check_volumes(path, data.shape[-1], tuple(data.shape), len(source.files), channel_names)
        if affine is None:
            affine, spatial = file_affine, file_spatial
        else:
            _check_grid(path, data.shape[:3], file_affine, source.files[0], arrays[0].shape[:3], affine)
        arrays.append(data)
    stacked = np.concatenate(arrays, axis=-1)
    return np.moveaxis(stacked, -1, 0), affine, spatial


def _dicom_input(source: InputSource, channel_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, tuple]:
    _dicom_channels(source, channel_names)
    values, affine = read_dicom_volume(source.series, geometry=source.checked)
    values = np.asarray(values, np.float32)
    return values[None], np.asarray(affine, np.float64), tuple(int(s) for s in values.shape)


def load_input(source: InputSource, channel_names: Sequence[str]) -> LoadedInput:
    """Load and check ``source`` for a model whose image channels are ``channel_names``.

    Raises:
        InputError: the input is unreadable or not what the model takes (names the file and the problem).
    """
    if source.kind == "dicom":
        data, affine, spatial = _dicom_input(source, channel_names)
    else:
        data, affine, spatial = _image_input(source, channel_names)
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(source.label, f"holds {int(bad.sum())} NaN or infinite voxel(s); the model needs finite "
                                       "intensities")
    meta = {"filename_or_obj": source.files[0], SOURCE_FILES_KEY: "\n".join(source.files),
            "original_affine": affine.copy(), "spatial_shape": np.asarray(data.shape[1:])}
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(data)), affine=torch.as_tensor(affine), meta=meta)
    return LoadedInput(image=image, affine=affine, spatial_shape=tuple(int(s) for s in spatial))
