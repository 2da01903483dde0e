"""An input of batch inference is read and checked once: the header check hands the loader what it read."""

from __future__ import annotations

import nibabel as nib
import numpy as np

import bundle.data.dicom_input as dicom_input
import bundle.inference.volumes as volumes
from bundle.inference.sources import collect_inputs
from bundle.testing.dicom_series import write_ct_series


def _counting(monkeypatch, module, name):
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_dicom_series_geometry_is_checked_once_and_read_as_checked(tmp_path, monkeypatch):
    hu = (np.arange(16 * 12 * 5).reshape(16, 12, 5) % 200 - 100).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    write_ct_series(hu, affine, tmp_path / "ct", uid_seed="volumes-test")
    (source,), skipped = collect_inputs([tmp_path / "ct"])
    assert not skipped and source.kind == "dicom"
    geometry = _counting(monkeypatch, dicom_input, "_checked_geometry")
    volumes.check_input(source, ["CT"])
    loaded = volumes.load_input(source, ["CT"])
    assert len(geometry) == 1  # the check's geometry is the loader's
    np.testing.assert_array_equal(loaded.image[0].numpy(), hu)
    assert loaded.spatial_shape == (16, 12, 5)


def test_an_image_files_header_is_read_by_the_check_and_its_voxels_by_the_loader(tmp_path, monkeypatch):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), path)
    (source,), _ = collect_inputs([path])
    colour = _counting(monkeypatch, volumes, "_rgb_problem")
    volumes.check_input(source, ["CT"])
    volumes.load_input(source, ["CT"])
    assert len(colour) == 1  # the header's colour check is not repeated by the loader
    unchecked = collect_inputs([path])[0][0]  # loaded without the check: it checks the colour itself
    volumes.load_input(unchecked, ["CT"])
    assert len(colour) == 2
