"""Batch inference end to end: a mixed folder (NIfTI, DICOM series written by this bundle and by SimpleITK, a corrupt
file, a structured report, a text file), files written by nibabel and pydicom, bad inputs, reruns, hostile DICOM text,
each kind of model, and both command lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from dicom_fixtures import write_sitk_series
from workflow_utils import REPO

from bundle.data.dicom_input import read_dicom_volume, scan_dicom_files
from bundle.testing.dicom_series import write_ct_series
from bundle.inference.batch import SUMMARY_NAME, run_batch
from bundle.inference.dicom_seg import read_dicom_seg_label
from bundle.workflows.common.model_card import CARD_NAME, write_card

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _case_files(data, case: int) -> Path:
    return data.root / f"volume-{case}.nii"


def _hu(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.rint(np.asarray(image.dataobj)).astype(np.int16), image.affine


def _by_input(result) -> dict:
    return {r.input: r for r in result.records}


def _status(result, needle: str):
    matches = [r for r in result.records if needle in r.input]
    assert len(matches) == 1, (needle, [r.input for r in result.records])
    return matches[0]


@pytest.fixture(scope="module")
def mixed(lits_data, tmp_path_factory):
    """The folder of the issue: NIfTI + two DICOM series in folders both named SE1 (one written by this bundle from
    the NIfTI next to it, one by SimpleITK) + a corrupt NIfTI + a DICOM structured report + a text file."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "nifti").mkdir()
    shutil.copy(_case_files(lits_data, 0), root / "nifti" / "volume-0.nii")
    hu, affine = _hu(_case_files(lits_data, 0))
    write_ct_series(hu, affine, root / "a" / "SE1", uid_seed="case0", series_description="abdomen CT")
    hu1, _ = _hu(_case_files(lits_data, 1))
    write_sitk_series(root / "b" / "SE1", np.transpose(hu1, (2, 1, 0)), (0.8, 0.8, 2.5), (10.0, -20.0, 5.0),
                      np.eye(3), description="abdomen CT")
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 this is not an image")
    shutil.copy(pydicom.data.get_testdata_file("test-SR.dcm"), root / "report.dcm")
    (root / "notes.txt").write_text("exported by PACS\n")
    return root


@pytest.fixture(scope="module")
def mixed_run(mixed, seg_work, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed_out")
    return run_batch([mixed], out, seg_work / "models", prior_cache_dir=str(out.parent / "mixed_cache")), out


def test_mixed_folder_runs_every_input_and_fails_only_the_corrupt_file(mixed_run, mixed):
    result, out = mixed_run
    assert result.exit_code == 1
    assert result.counts == {"done": 3, "exists": 0, "skipped": 2, "failed": 1, "interrupted": 0}
    assert _status(result, "broken.nii.gz").status == "failed"
    assert "cannot be read" in _status(result, "broken.nii.gz").reason
    assert _status(result, "report.dcm").status == "skipped"
    assert "Structured Report" in _status(result, "report.dcm").reason or "SR" in _status(result, "report.dcm").reason
    assert _status(result, "notes.txt").status == "skipped"
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["exit_code"] == 1 and summary["counts"] == result.counts
    assert len(summary["records"]) == 6
    series = [r for r in result.records if r.kind == "dicom"]
    assert len(series) == 2 and series[0].name != series[1].name  # two folders named SE1, two outputs
    assert all(len(r.outputs) == 2 for r in series)


def test_nifti_outputs_keep_the_input_grid_and_dicom_matches_its_nifti(mixed_run, mixed):
    result, out = mixed_run
    source = nib.load(mixed / "nifti" / "volume-0.nii")
    written = nib.load(out / "volume-0_pred.nii.gz")
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
    assert written.get_data_dtype() == np.uint8
    labels = np.asarray(written.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    # the series written from that NIfTI: same voxels, same geometry, so the same label map
    record = next(r for r in result.records if r.kind == "dicom" and "/a/SE1" in r.input)
    dicom_nifti = nib.load(next(p for p in record.outputs if p.endswith(".nii.gz")))
    assert np.allclose(dicom_nifti.affine, source.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(dicom_nifti.dataobj), labels)


def test_dicom_seg_references_its_series_with_the_same_geometry(mixed_run, mixed):
    result, _ = mixed_run
    for record in (r for r in result.records if r.kind == "dicom"):
        seg_path = next(p for p in record.outputs if p.endswith(".dcm"))
        nifti = nib.load(next(p for p in record.outputs if p.endswith(".nii.gz")))
        series = scan_dicom_files(sorted(str(p) for p in Path(record.input.split(" (")[0]).glob("*"))).series[0]
        _, series_affine = read_dicom_volume(series)
        label, affine = read_dicom_seg_label(seg_path, series.datasets)
        np.testing.assert_array_equal(label, np.asarray(nifti.dataobj))
        assert np.allclose(affine, series_affine, atol=1e-3) and np.allclose(nifti.affine, series_affine, atol=1e-3)
        seg = pydicom.dcmread(seg_path)
        assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID
        assert seg.StudyInstanceUID == series.datasets[0].StudyInstanceUID
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]
        referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert referenced == {ds.SOPInstanceUID for ds in series.datasets}


def test_a_rerun_skips_finished_inputs_unless_overwrite(mixed_run, mixed, seg_work):
    _result, out = mixed_run
    target = out / "volume-0_pred.nii.gz"
    before = target.stat().st_mtime_ns
    again = run_batch([mixed], out, seg_work / "models", prior_cache_dir=str(out.parent / "mixed_cache"))
    assert again.counts == {"done": 0, "exists": 3, "skipped": 2, "failed": 1, "interrupted": 0}
    assert again.exit_code == 1
    assert target.stat().st_mtime_ns == before
    forced = run_batch([mixed / "nifti"], out, seg_work / "models", overwrite=True,
                       prior_cache_dir=str(out.parent / "mixed_cache"))
    assert forced.counts["done"] == 1 and forced.exit_code == 0
    assert target.stat().st_mtime_ns != before
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_bad_inputs_fail_one_by_one_with_the_file_and_the_problem(lits_data, seg_work, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(NIBABEL_DATA / "example4d.nii.gz", bad / "fmri_4d.nii.gz")
    shutil.copy(NIBABEL_DATA / "example_nifti2.nii.gz", bad / "nifti2_4d.nii.gz")
    rgb = np.zeros((8, 8, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), bad / "colour.nii.gz")
    hu, affine = _hu(_case_files(lits_data, 2))
    with_nan = hu.astype(np.float32)
    with_nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(with_nan, affine), bad / "with_nan.nii.gz")
    data = (bad / "fmri_4d.nii.gz").read_bytes()
    (bad / "truncated.nii.gz").write_bytes(data[: len(data) // 3])
    (bad / "empty.nii.gz").write_bytes(b"")
    files = write_ct_series(hu, affine, bad / "gap", uid_seed="gap")
    files[len(files) // 2].unlink()
    shutil.copy(pydicom.data.get_testdata_file("SC_rgb_small_odd.dcm"), bad / "photo.dcm")
    cache = tmp_path / "cache"
    result = run_batch([bad], tmp_path / "out", seg_work / "models", prior_cache_dir=str(cache))
    expected = {"fmri_4d": "4D image of 2 volumes", "nifti2_4d": "4D image of 2 volumes", "colour": "colour",
                "with_nan": "NaN", "truncated": "truncated", "empty": "empty", "gap": "missing",
                "photo": "colour"}
    for needle, words in expected.items():
        record = _status(result, needle)
        assert record.status == "failed", record
        assert words.lower() in record.reason.lower(), record.reason
    assert result.exit_code == 1 and result.counts["done"] == 0
    assert not cache.exists() or not any(p.name.endswith(".nii.gz") for p in cache.rglob("*"))  # no prior computed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [SUMMARY_NAME]


def test_2d_inputs_run_as_one_slice_and_keep_their_loaded_shape(seg_work, tmp_path):
    ct_small = pydicom.data.get_testdata_file("CT_small.dcm")
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(ct_small, folder / "slice.dcm")
    plane = np.asarray(nib.load(NIBABEL_DATA / "anatomical.nii").dataobj)[:, :, 12].astype(np.float32)
    nib.save(nib.Nifti1Image(plane, np.diag([2.0, 2.0, 1.0, 1.0])), folder / "plane.nii.gz")
    # the plane is an MR slice and the model a CT one: allowed, as the point here is the 2D shape
    result = run_batch([folder], tmp_path / "out", seg_work / "models", prior_cache_dir=str(tmp_path / "cache"),
                       allow_modality_mismatch=True)
    assert result.exit_code == 0 and result.counts["done"] == 2
    plane_out = nib.load(tmp_path / "out" / "plane_pred.nii.gz")
    assert plane_out.shape == plane.shape and np.allclose(plane_out.affine, np.diag([2.0, 2.0, 1.0, 1.0]))
    dicom = next(r for r in result.records if r.kind == "dicom")
    slice_out = nib.load(next(p for p in dicom.outputs if p.endswith(".nii.gz")))
    assert slice_out.shape == (128, 128, 1)
    label, _ = read_dicom_seg_label(next(p for p in dicom.outputs if p.endswith(".dcm")), None)
    np.testing.assert_array_equal(label, np.asarray(slice_out.dataobj))


def test_flipped_and_oblique_files_keep_their_grid_and_agree_with_the_original(lits_data, seg_work, tmp_path):
    source = nib.load(_case_files(lits_data, 3))  # the phantom is stored LPS (negative x and y steps)
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(source, folder / "original.nii.gz")
    flipped = source.as_reoriented([[0, -1], [1, -1], [2, 1]])  # first two axes reversed: the same scan, RAS order
    assert not np.allclose(flipped.affine, source.affine)
    nib.save(flipped, folder / "flipped.nii.gz")
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    oblique = nib.Nifti1Image(np.asarray(source.dataobj), turn @ source.affine)
    nib.save(oblique, folder / "oblique.nii.gz")
    result = run_batch([folder], tmp_path / "out", seg_work / "models", prior_cache_dir=str(tmp_path / "cache"))
    assert result.exit_code == 0
    outputs = {name: nib.load(tmp_path / "out" / f"{name}_pred.nii.gz") for name in ("original", "flipped", "oblique")}
    for name, image in (("original", source), ("flipped", flipped), ("oblique", oblique)):
        assert outputs[name].shape == image.shape and np.allclose(outputs[name].affine, image.affine, atol=1e-4)
    canonical = {name: np.asarray(nib.as_closest_canonical(outputs[name]).dataobj) for name in ("original", "flipped")}
    assert canonical["original"].any()
    np.testing.assert_array_equal(canonical["flipped"], canonical["original"])


def test_hostile_dicom_text_cannot_leave_or_hide_in_the_output_folder(lits_data, seg_work, tmp_path):
    hu, affine = _hu(_case_files(lits_data, 0))
    hostile = "../../etc/passwd\x1b[31m\x00..\\evil/" + "x" * 300
    write_ct_series(hu, affine, tmp_path / "in" / "evil..name", uid_seed="hostile", series_description=hostile[:64],
                    patient_name="Evil^../../\x07Name")
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    result = run_batch([tmp_path / "in"], out, seg_work / "models", prior_cache_dir=str(tmp_path / "cache"))
    assert result.exit_code == 0 and result.counts["done"] == 1
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(out in p.parents or p == out or tmp_path / "cache" in p.parents or p == tmp_path / "cache"
               or p == out.parent for p in created), created
    name = result.records[0].name
    assert name and ".." not in name and "/" not in name and "\\" not in name and not name.startswith(".")
    assert all(c.isalnum() or c in "._-" for c in name)
    seg = pydicom.dcmread(next(p for p in result.records[0].outputs if p.endswith(".dcm")))
    assert seg.Modality == "SEG"


def test_priors_come_from_the_training_cache(lits_data, seg_work, tmp_path):
    cache = seg_work / "priors"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert before
    result = run_batch([lits_data.datalist], tmp_path / "out", seg_work / "models", section="training")
    assert result.exit_code == 0 and result.counts["done"] == 2
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    cached = [p for p in before if p.name.endswith(".nii.gz")]
    assert cached and all(after[p] == before[p] for p in cached)  # read, not recomputed


def test_classification_model_writes_probabilities_per_slice(lits_data, cls_work, tmp_path):
    result = run_batch([lits_data.datalist], tmp_path / "out", cls_work / "models")
    assert result.exit_code == 0 and result.counts["done"] == 1
    record = result.records[0]
    table = json.loads(Path(next(p for p in record.outputs if p.endswith(".json"))).read_text())
    rows = table["rows"]
    assert rows and [r["slice_index"] for r in rows] == list(range(len(rows)))
    for row in rows:
        probs = [row[name] for name in table["class_names"]]
        assert all(0.0 <= p <= 1.0 for p in probs) and row["predicted"]
    csv_lines = Path(next(p for p in record.outputs if p.endswith(".csv"))).read_text().splitlines()
    assert csv_lines[0].startswith("slice_index,") and len(csv_lines) == len(rows) + 1


def test_sam_mix_model_writes_masks_and_a_dicom_seg_named_after_its_organ(lits_data, mix_work, tmp_path):
    hu, affine = _hu(_case_files(lits_data, 0))
    write_ct_series(hu, affine, tmp_path / "in" / "series", uid_seed="mix")
    shutil.copy(_case_files(lits_data, 0), tmp_path / "in" / "volume-0.nii")
    result = run_batch([tmp_path / "in"], tmp_path / "out", mix_work / "models")
    assert result.exit_code == 0 and result.counts["done"] == 2, [r.reason for r in result.records]
    series = next(r for r in result.records if r.kind == "dicom")
    seg = pydicom.dcmread(next(p for p in series.outputs if p.endswith(".dcm")))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]
    nifti = nib.load(tmp_path / "out" / "volume-0_pred.nii.gz")
    assert nifti.shape == hu.shape and set(np.unique(np.asarray(nifti.dataobj))) <= {0, 1}


def test_console_script_and_bundle_command(mixed, seg_work, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    missing = subprocess.run([sys.executable, "-m", "bundle.inference.cli", "--input", str(mixed), "--output",
                              str(tmp_path / "o1"), "--model", str(tmp_path / "no_model")],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith(f"ERROR: {tmp_path / 'no_model'}")
    command = [sys.executable, "-m", "monai.bundle", "run", "batch_inferring", "--config_file",
               str(REPO / "configs" / "batch_inference.json"), "--input", str(mixed / "nifti"), "--input",
               str(mixed / "broken.nii.gz"), "--output", str(tmp_path / "o2"), "--model", str(seg_work / "models"),
               "--prior_cache", str(tmp_path / "cache")]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path, check=False)
    assert run.returncode == 1, run.stderr[-2000:]
    summary = json.loads((tmp_path / "o2" / SUMMARY_NAME).read_text())
    assert summary["counts"]["done"] == 1 and summary["counts"]["failed"] == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"FAILED: {mixed / 'broken.nii.gz'}")
    noise = (run.stdout + run.stderr).count("nvImageCodec is not available")
    assert noise <= 1


def test_multiframe_dicom_gives_the_same_result_as_its_single_frame_series(lits_data, seg_work, tmp_path):
    from dicom_fixtures import write_legacy_enhanced_ct

    hu, affine = _hu(_case_files(lits_data, 1))
    files = write_ct_series(hu, affine, tmp_path / "single", uid_seed="mf")
    shuffled = list(np.random.default_rng(0).permutation(len(files)))
    (tmp_path / "multi").mkdir()
    write_legacy_enhanced_ct(files, tmp_path / "multi" / "enhanced.dcm", frame_order=shuffled)
    result = run_batch([tmp_path / "single", tmp_path / "multi"], tmp_path / "out", seg_work / "models",
                       prior_cache_dir=str(tmp_path / "cache"))
    assert result.exit_code == 0 and result.counts["done"] == 2, [r.reason for r in result.records]
    single, multi = (next(r for r in result.records if key in r.input) for key in ("single", "enhanced.dcm"))
    labels = [nib.load(next(p for p in r.outputs if p.endswith(".nii.gz"))) for r in (single, multi)]
    np.testing.assert_array_equal(np.asarray(labels[0].dataobj), np.asarray(labels[1].dataobj))
    assert np.allclose(labels[0].affine, labels[1].affine, atol=1e-3)
    series = scan_dicom_files([str(tmp_path / "multi" / "enhanced.dcm")]).series[0]
    label, seg_affine = read_dicom_seg_label(next(p for p in multi.outputs if p.endswith(".dcm")), series.datasets,
                                             series.frame_order)
    np.testing.assert_array_equal(label, np.asarray(labels[1].dataobj))
    assert np.allclose(seg_affine, labels[1].affine, atol=1e-3)


def test_multi_modal_model_takes_datalist_entries_and_refuses_single_volumes(tmp_path_factory, tmp_path):
    from workflow_utils import make_phantom_set, train

    brats = make_phantom_set("brats", tmp_path_factory.mktemp("brats"))
    work = tmp_path_factory.mktemp("brats_seg")
    train(brats, work)
    entry = json.loads(brats.datalist.read_text())["testing"][0]
    one_file = brats.root / entry["image"][0]
    hu = np.zeros((16, 16, 4), np.int16)
    write_ct_series(hu, np.eye(4), tmp_path / "ct", uid_seed="ct")
    result = run_batch([brats.datalist, one_file, tmp_path / "ct"], tmp_path / "out", work / "models")
    assert result.counts["done"] == 1 and result.exit_code == 1
    written = nib.load(next(r for r in result.records if r.status == "done").outputs[0])
    reference = nib.load(brats.root / entry["image"][0])
    assert written.shape == reference.shape and np.allclose(written.affine, reference.affine, atol=1e-4)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
    single = next(r for r in result.records if r.input == str(one_file))
    assert single.status == "failed" and "4 channels" in single.reason and "FLAIR" in single.reason
    dicom = next(r for r in result.records if r.kind == "dicom")
    assert dicom.status == "failed" and "one grey-scale volume" in dicom.reason


# ------------------------------------------------------------------ who wrote an output; files it did not write


def _other_model(seg_work, folder: Path) -> Path:
    """A copy of the segmentation model with other weights (same card): what a retraining leaves."""
    import torch

    shutil.copytree(seg_work / "models", folder)
    weights = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    state = weights.get("network", weights) if isinstance(weights, dict) else weights
    name = next(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point())
    state[name] = state[name] + 0.5
    torch.save(weights, folder / "model.pt")
    card = json.loads((folder / CARD_NAME).read_text())
    write_card(folder / CARD_NAME, card)  # bound to the new weights, as a training writes it
    return folder


def _record_of(output: Path, name: str) -> dict:
    return json.loads((output / f"{name}_record.json").read_text())


def test_another_model_or_a_changed_input_is_refused_then_predicted_again_with_overwrite(lits_data, seg_work,
                                                                                          tmp_path):
    from bundle.hashing import file_sha256

    scans, out, cache = tmp_path / "scans", tmp_path / "out", str(tmp_path / "cache")
    scans.mkdir()
    shutil.copy(_case_files(lits_data, 0), scans / "volume-0.nii")
    first = run_batch([scans], out, seg_work / "models", prior_cache_dir=cache)
    assert first.counts["done"] == 1 and first.exit_code == 0
    prediction = out / "volume-0_pred.nii.gz"
    record = _record_of(out, "volume-0")
    assert record["state"] == "complete"
    assert record["model"]["model_sha256"] == file_sha256(seg_work / "models" / "model.pt")
    assert record["outputs"]["volume-0_pred.nii.gz"]["sha256"] == file_sha256(prediction)
    assert record["input"]["sha256"] and first.records[0].record == str(out / "volume-0_record.json")

    other = _other_model(seg_work, tmp_path / "other")
    before = prediction.read_bytes()
    refused = run_batch([scans], out, other, prior_cache_dir=cache)
    (line,) = [r for r in refused.records if r.input.endswith("volume-0.nii")]
    assert refused.exit_code == 1 and line.status == "failed" and not line.outputs
    assert str(prediction) in line.reason and "another model" in line.reason and "--overwrite true" in line.reason
    assert prediction.read_bytes() == before
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["model_sha256"] == file_sha256(other / "model.pt") and summary["counts"]["exists"] == 0

    again = run_batch([scans], out, other, prior_cache_dir=cache, overwrite=True)
    assert again.counts["done"] == 1 and again.exit_code == 0
    assert _record_of(out, "volume-0")["model"]["model_sha256"] == file_sha256(other / "model.pt")
    assert run_batch([scans], out, other, prior_cache_dir=cache).counts["exists"] == 1

    shutil.copy(_case_files(lits_data, 1), scans / "volume-0.nii")  # a replaced scan under the same name
    changed = run_batch([scans], out, other, prior_cache_dir=cache)
    assert changed.exit_code == 1 and "another version of this input" in changed.records[0].reason
    assert run_batch([scans], out, other, prior_cache_dir=cache, overwrite=True).counts["done"] == 1


@pytest.mark.parametrize("overwrite", [False, True])
def test_files_the_bundle_did_not_write_are_never_written_over(lits_data, seg_work, tmp_path, overwrite):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(_case_files(lits_data, 0), scans / "a.nii")
    nib.save(nib.load(_case_files(lits_data, 1)), scans / "a_pred.nii.gz")  # the user's, named like a prediction
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_pred.nii.gz").write_bytes(b"someone else's file")
    shutil.copy(_case_files(lits_data, 2), tmp_path / "b.nii")
    kept = {p: p.read_bytes() for p in (scans / "a_pred.nii.gz", out / "b_pred.nii.gz")}
    into_scans = run_batch([scans], scans, seg_work / "models", prior_cache_dir=str(tmp_path / "cache"),
                           overwrite=overwrite)
    refused = _status(into_scans, "a.nii")
    assert refused.status == "failed" and "is an input or label file of this run" in refused.reason
    assert _status(into_scans, "a_pred.nii.gz").status == "done"  # an input like any other: a_pred_pred.nii.gz
    into_out = run_batch([tmp_path / "b.nii"], out, seg_work / "models", prior_cache_dir=str(tmp_path / "cache"),
                         overwrite=overwrite)
    assert into_out.exit_code == 1
    assert f"{out / 'b_pred.nii.gz'}: exists and was not written by batch inference" in into_out.records[0].reason
    assert {p: p.read_bytes() for p in kept} == kept


def test_prediction_names_never_collide_with_the_datasets_label_names(tmp_path):
    from bundle.data.datasets.abdomenct1k import ACT1K_MASK
    from bundle.data.datasets.brats import BRATS_2023, BRATS_LEGACY
    from bundle.data.datasets.lits import LITS_SEGMENTATION
    from bundle.inference.outputs import expected_outputs
    from bundle.inference.sources import InputSource

    for stem in ("BraTS2021_00003", "BraTS2021_00003_flair", "volume-7", "Case_00001_0000", "Case_00001", "la_003"):
        (nifti,) = expected_outputs(tmp_path, InputSource(stem, "image", [], stem), "segmentation")
        assert not any(p.match(nifti.name) for p in (BRATS_LEGACY, BRATS_2023, LITS_SEGMENTATION, ACT1K_MASK))
        assert "seg" not in nifti.name.lower()  # the BraTS scan adopts a lone '*seg*' file as a case's label


def test_a_folder_that_is_input_and_output_finds_its_inputs_and_not_the_outputs(lits_data, seg_work, tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    shutil.copy(_case_files(lits_data, 0), case / "volume-0.nii")
    first = run_batch([case], case, seg_work / "models", prior_cache_dir=str(tmp_path / "cache"))
    assert first.counts["done"] == 1 and first.exit_code == 0
    again = run_batch([case], case, seg_work / "models")  # default cache: case/prior_cache, not an input either
    assert again.counts == {"done": 0, "exists": 1, "skipped": 0, "failed": 0, "interrupted": 0}, again.records
    assert again.exit_code == 0


def test_an_empty_run_says_so_and_exits_non_zero(seg_work, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("no scans here\n")
    for folder in ("empty", "text"):
        result = run_batch([tmp_path / folder], tmp_path / f"out_{folder}", seg_work / "models")
        assert result.exit_code == 2 and result.found == 0
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"ERROR: no input found in {tmp_path / folder}"), last
        assert json.loads((tmp_path / f"out_{folder}" / SUMMARY_NAME).read_text())["exit_code"] == 2


def test_links_hidden_files_and_dicom_named_like_nifti(lits_data, seg_work, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(_case_files(lits_data, 0), scans / "volume-0.nii")
    os.symlink("loop_b.nii.gz", scans / "loop_a.nii.gz")
    os.symlink("loop_a.nii.gz", scans / "loop_b.nii.gz")
    os.symlink("gone.nii.gz", scans / "dangling.nii.gz")
    shutil.copy(_case_files(lits_data, 1), scans / ".hidden.nii")
    (scans / ".cache").mkdir()
    hu, affine = _hu(_case_files(lits_data, 2))
    for i, f in enumerate(write_ct_series(hu, affine, tmp_path / "series", uid_seed="named")):
        Path(f).rename(scans / f"slice_{i:03d}.nii.gz")  # DICOM files with a NIfTI name: found by content
    result = run_batch([scans], tmp_path / "out", seg_work / "models", prior_cache_dir=str(tmp_path / "cache"))
    assert result.exit_code == 1 and result.counts["done"] == 2, [(r.input, r.reason) for r in result.records]
    assert _status(result, "volume-0.nii").status == "done"
    assert next(r for r in result.records if r.kind == "dicom").status == "done"
    for name in ("loop_a", "loop_b"):
        record = _status(result, name)
        assert record.status == "failed" and "symbolic link loop" in record.reason
    assert "does not exist" in _status(result, "dangling").reason
    assert _status(result, ".hidden.nii").status == "skipped" and "hidden file" in _status(result, ".hidden.nii").reason
    assert _status(result, ".cache").status == "skipped"
    listed = run_batch([scans / "loop_a.nii.gz"], tmp_path / "out2", seg_work / "models")
    assert listed.exit_code == 1 and "symbolic link loop" in listed.records[0].reason


def test_ctrl_c_writes_the_summary_of_what_was_done(lits_data, seg_work, tmp_path, monkeypatch):
    import bundle.inference.batch as batch

    scans = tmp_path / "scans"
    scans.mkdir()
    for case in range(3):
        shutil.copy(_case_files(lits_data, case), scans / f"volume-{case}.nii")
    real_load, calls = batch.load_input, []

    def load_then_interrupt(source, channels):
        calls.append(source.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_load(source, channels)

    monkeypatch.setattr(batch, "load_input", load_then_interrupt)
    result = run_batch([scans], tmp_path / "out", seg_work / "models", prior_cache_dir=str(tmp_path / "cache"))
    assert result.exit_code == 130 and result.interrupted
    summary = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert summary["exit_code"] == 130 and summary["counts"]["done"] == 1 and summary["counts"]["interrupted"] == 2
    assert all("interrupted" in r["reason"] for r in summary["records"] if r["status"] == "interrupted")
    monkeypatch.setattr(batch, "load_input", real_load)
    rest = run_batch([scans], tmp_path / "out", seg_work / "models", prior_cache_dir=str(tmp_path / "cache"))
    assert rest.counts["exists"] == 1 and rest.counts["done"] == 2 and rest.exit_code == 0


def test_outputs_of_a_run_killed_while_writing_are_finished_not_refused(lits_data, seg_work, tmp_path):
    scans, out, cache = tmp_path / "scans", tmp_path / "out", str(tmp_path / "cache")
    scans.mkdir()
    shutil.copy(_case_files(lits_data, 0), scans / "volume-0.nii")
    assert run_batch([scans], out, seg_work / "models", prior_cache_dir=cache).exit_code == 0
    record_file = out / "volume-0_record.json"
    record = json.loads(record_file.read_text())
    # what a kill -9 between the first output and the final record leaves: a 'writing' record claiming the outputs
    record.update(state="writing", outputs={name: {} for name in record["outputs"]})
    record_file.write_text(json.dumps(record))
    (out / "volume-0_pred.nii.gz").write_bytes(b"half of an earlier prediction")
    resumed = run_batch([scans], out, seg_work / "models", prior_cache_dir=cache)
    assert resumed.counts["done"] == 1 and resumed.exit_code == 0, resumed.records
    assert json.loads(record_file.read_text())["state"] == "complete"
    nib.load(out / "volume-0_pred.nii.gz").get_fdata()  # whole again
