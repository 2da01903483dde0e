"""Image headers without the voxels: shape, grid and completeness of a file for about a millisecond.

The case check (:mod:`bundle.data.case_check`) runs over a whole datalist before any expensive work, so it must
not read voxels. A header gives the shape and the affine; completeness comes from the file size for ``.nii`` and
from the gzip trailer for ``.nii.gz``: its last four bytes hold the uncompressed size (mod 2**32), which for a
NIfTI is the data offset plus the data bytes. A file cut short ends elsewhere, so the stored number disagrees and
only then is the file decompressed (without keeping the data) to be sure (multi-member gzip files, e.g. from
``bgzip``, store a member's size there, which the confirming read tells apart).

Formats: NIfTI through nibabel; MetaImage, NRRD and the other single-file formats SimpleITK knows through
``ImageFileReader.ReadImageInformation`` (LPS converted to RAS, as MONAI's readers do); a DICOM series folder and
anything else through a full MONAI read (:func:`bundle.data.checks.check_image_file`), since a series' grid needs
all of its slices.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from dataclasses import dataclass
from stat import S_ISDIR

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from bundle.data.image_files import check_image_file
from bundle.errors import InputError, MissingInputError

__all__ = ["ImageHeader", "read_header"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".nia", ".hdr", ".img", ".vtk")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class ImageHeader:
    """What an image file declares about its voxels.

    Attributes:
        path: the file.
        shape: the voxel array's shape as the file stores it, ``(X, Y, Z)`` or ``(X, Y, Z, T)`` (vector pixels add
            a last axis of their components).
        spatial_shape: the first three axes (fewer for a 2D file).
        affine: the 4 x 4 voxel-to-world matrix in RAS millimetres, as MONAI's readers give it.
    """

    path: str
    shape: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def channels(self) -> int:
        """Volumes held beyond the spatial axes (1 for a 3D file, T for a 4D series or multi-modal file)."""
        return int(np.prod(self.shape[len(self.spatial_shape) :], dtype=np.int64))


def _squeeze_trailing(shape: tuple[int, ...], keep: int = 3) -> tuple[int, ...]:
    """Drop trailing axes of length 1 beyond the first ``keep`` (NIfTI writes ``(X, Y, Z, 1)`` for some 3D images)."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > keep and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _gzip_whole(path: str) -> str | None:
    """Decompress a gzip file to the end without keeping the data; the reason it fails, or None."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as err:
        return f"it is truncated or corrupt ({type(err).__name__}: {err})"
    return None


def _nifti_completeness(path: str, expected: int, size: int, trailer: bytes) -> str | None:
    """Why a NIfTI file holding ``expected`` bytes (header and data) is incomplete, or None.

    A size comparison; the file is decompressed only when the gzip trailer disagrees.
    """
    if path.lower().endswith(".gz"):
        (stored,) = struct.unpack("<I", trailer.rjust(4, b"\0"))
        return None if stored == expected % (1 << 32) else _gzip_whole(path)
    if size < expected:
        return f"it is truncated: {size} bytes, but its header declares {expected}"
    return None


def _gunzip_start(f, n: int) -> bytes:
    """The first ``n`` uncompressed bytes of a gzip stream, decompressing no more input than needed."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16: expect a gzip header
    out = b""
    while len(out) < n:
        chunk = inflater.unconsumed_tail or f.read(4096)
        if not chunk:
            break
        out += inflater.decompress(chunk, n - len(out))
        if inflater.eof:
            break
    return out


_NIFTI1 = nib.Nifti1Header.template_dtype


def _parse_nifti(path: str, raw: bytes) -> tuple[tuple[int, ...], np.ndarray, int]:
    """``(shape, affine, bytes of header and data)`` of a NIfTI header's raw bytes.

    The common case (little-endian NIfTI-1 with an sform, what nibabel, ITK and dcm2niix write) is read straight
    from the bytes; anything else goes through nibabel's header class (qform, NIfTI-2, other byte order).
    """
    if len(raw) >= _NIFTI1.itemsize and int.from_bytes(raw[:4], "little") == 348:
        fields = np.frombuffer(raw, dtype=_NIFTI1, count=1)[0]
        if int(fields["sform_code"]) > 0 and bytes(fields["magic"]).rstrip(b"\0") in (b"n+1", b"ni1"):
            ndim = int(fields["dim"][0])
            code = int(fields["datatype"])
            if 0 < ndim <= 7 and code in nib.nifti1.data_type_codes.dtype:
                shape = tuple(int(v) for v in fields["dim"][1 : ndim + 1])
                affine = np.eye(4)
                affine[0], affine[1], affine[2] = fields["srow_x"], fields["srow_y"], fields["srow_z"]
                itemsize = nib.nifti1.data_type_codes.dtype[code].itemsize
                return shape, affine, int(fields["vox_offset"]) + int(np.prod(shape, dtype=np.int64)) * itemsize
    klass = _header_class(raw)
    if klass is None or len(raw) < klass.template_dtype.itemsize:
        what = "its header is cut short" if klass is not None else "no NIfTI header at its start"
        raise InputError(path, f"cannot be read: it is not a NIfTI image ({what})")
    try:
        header = klass.from_fileobj(io.BytesIO(raw), check=False)
        magic = bytes(header["magic"]).rstrip(b"\0")
        if magic not in (b"n+1", b"ni1", b"n+2", b"ni2"):
            raise HeaderDataError(f"magic string {magic!r}")
        shape = tuple(int(v) for v in header.get_data_shape())
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
        itemsize = header.get_data_dtype().itemsize
    except (HeaderDataError, ValueError, TypeError) as err:
        raise InputError(path, f"cannot be read: it is not a NIfTI image ({err})") from err
    return shape, affine, int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * itemsize


def _header_class(raw: bytes):
    """NIfTI-1 or NIfTI-2 header class from ``sizeof_hdr`` (348 or 540, in either byte order), or None."""
    for order in ("little", "big"):
        size = int.from_bytes(raw[:4], order)
        if size == 348:
            return nib.Nifti1Header
        if size == 540:
            return nib.Nifti2Header
    return None


def _nifti_header(path: str, size: int) -> ImageHeader:
    # the header's first 540 bytes and the gzip trailer, from one open file: nib.load builds an image and a data
    # proxy too, three times slower (this runs for every file of a datalist)
    try:
        with open(path, "rb") as f:
            f.seek(max(size - 4, 0))
            trailer = f.read(4)
            f.seek(0)
            raw = _gunzip_start(f, 540) if path.lower().endswith(".gz") else f.read(540)
    except (OSError, EOFError, zlib.error) as err:
        if "incorrect header check" in str(err).lower():
            raise InputError(
                path, "cannot be read: it is not an image: the name ends in .gz but the content is not gzip-compressed"
            ) from err
        raise InputError(path, f"cannot be read: it is truncated or corrupt ({type(err).__name__}: {err})") from err
    shape, affine, expected = _parse_nifti(path, raw)
    incomplete = _nifti_completeness(path, expected, size, trailer)
    if incomplete:
        raise InputError(path, f"cannot be read: {incomplete}")
    shape = _squeeze_trailing(shape)
    return ImageHeader(path, shape, shape[:3], affine)


def _sitk_header(path: str) -> ImageHeader:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise InputError(path, f"cannot be read: {lines[-1][:200] if lines else err}") from err
    size = tuple(int(s) for s in reader.GetSize())
    dim = len(size)
    spatial = min(dim, 3)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:spatial, :spatial]
    spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)[:spatial]
    affine = np.eye(4)
    affine[:spatial, :spatial] = direction * spacing
    affine[:spatial, 3] = np.asarray(reader.GetOrigin(), dtype=np.float64)[:spatial]
    components = int(reader.GetNumberOfComponents())
    shape = _squeeze_trailing(size + ((components,) if components > 1 else ()))
    return ImageHeader(path, shape, size[:spatial], _LPS_TO_RAS @ affine)


def _full_read_header(path: str) -> ImageHeader:
    image = check_image_file(path)
    meta = image.meta
    spatial = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", image.shape[:3])).ravel())
    return ImageHeader(path, tuple(int(s) for s in image.shape), spatial, np.asarray(image.affine, np.float64))


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Read an image's header (not its voxels) and check the file is complete.

    Args:
        path: an image file (NIfTI, MetaImage, NRRD, ...) or a DICOM series folder.

    Returns:
        the :class:`ImageHeader`.

    Raises:
        MissingInputError: the file does not exist.
        InputError: empty, truncated, not an image, or unreadable; the message names the file.
    """
    path = os.fspath(path)
    try:
        stat = os.stat(path)
    except FileNotFoundError as err:
        raise MissingInputError(path, "cannot be read: the file does not exist") from err
    except OSError as err:
        raise InputError(path, f"cannot be read: {err.strerror or err}") from err
    if S_ISDIR(stat.st_mode):
        return _full_read_header(path)
    if stat.st_size == 0:
        raise InputError(path, "cannot be read: the file is empty (0 bytes)")
    lowered = path.lower()
    if lowered.endswith(_NIFTI_SUFFIXES):
        return _nifti_header(path, stat.st_size)
    if lowered.endswith(_SITK_SUFFIXES):
        return _sitk_header(path)
    return _full_read_header(path)
