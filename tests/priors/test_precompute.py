"""Tests of bundle.priors.precompute and configs/precompute_priors.json on a tiny BraTS 2021 phantom dataset."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest

from bundle.data.datalist import build_datalist, write_datalist
from bundle.testing.phantom_writers import make_phantoms
from bundle.errors import error_line
from bundle.priors.settings import PriorSettings
from bundle.priors.precompute import PriorPrecompute, default_loader
from bundle.priors.transforms import SamPrior
from bundle.sam.fallback import RegionProposalMasks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = ("sam_seg_prior", "sam_boundary_prior")


def _entry(case_dir) -> dict:
    return json.loads((case_dir / "entry.json").read_text())


def _kind_file(case_dir, kind="sam_seg_prior"):
    """A cached prior's file, as its entry names it (``<kind>.<12 hex digits of its sha256>.nii.gz``)."""
    return case_dir / _entry(case_dir)["files"][kind]


class SpyGenerator:
    def __init__(self, inner):
        self.inner, self.images = inner, 0

    def generate_batch(self, images):
        self.images += len(images)
        return self.inner.generate_batch(images)

    def signature(self):
        return self.inner.signature()


def _fallback():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RegionProposalMasks()


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """Three BraTS 2021 phantom cases (one per datalist section) and their datalist."""
    root = tmp_path_factory.mktemp("brats2021")
    cases = make_phantoms("brats2021", root, cases=3, size=24, seed=0)
    datalist = build_datalist("brats", root, progress=False)
    assert all(len(datalist[s]) == 1 for s in ("training", "validation", "testing"))
    path = write_datalist(datalist, root / "datalist.json")
    return {"root": root, "datalist": path, "cases": {c.case_id: c for c in cases}}


def _runner(brats, cache_dir, generator, **kwargs):
    prior = SamPrior(generator, window={"preset": "mr_percentile", "channels": 0})
    return PriorPrecompute(brats["datalist"], brats["root"], cache_dir, prior, progress=False, **kwargs)


def test_fallback_run_then_rerun(brats, tmp_path):
    root = tmp_path / "cache"
    runner = _runner(brats, root, _fallback())
    summary = runner.run()
    cache_dir = runner.cached.cache.cache_dir  # the partition of this configuration
    assert (summary["computed"], summary["up_to_date"], summary["cases"]) == (3, 0, 3)
    assert summary["generator"] == "region_proposals" and summary["partition"] == cache_dir.name
    assert json.loads((root / "last_run.json").read_text()) == {**summary, "errors": {}}
    for case_id, case in brats["cases"].items():
        assert set(os.listdir(cache_dir / case_id)) == {*_entry(cache_dir / case_id)["files"].values(), "entry.json"}
        image = default_loader()({"image": [str(case.images[m]) for m in ("flair", "t1", "t1ce", "t2")]})["image"]
        seg = nib.load(str(_kind_file(cache_dir / case_id)))
        assert seg.shape == tuple(image.shape[1:])
        np.testing.assert_allclose(seg.affine, image.affine.numpy(), atol=1e-5)
        entry = json.loads((cache_dir / case_id / "entry.json").read_text())
        assert [os.path.basename(fp["path"]) for fp in entry["inputs"]] == [
            f"{case_id}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")]
        assert 0 < entry["slices_sent_to_generator"] <= image.shape[-1]
    manifest = json.loads(open(summary["manifest"]).read())
    assert set(manifest["cases"]) == set(brats["cases"])
    assert manifest["signature"]["prior"]["generator"]["generator"] == "region_proposals"

    spy = SpyGenerator(_fallback())
    unloadable = lambda data: pytest.fail("an up-to-date case was loaded")  # noqa: E731
    again = _runner(brats, root, spy, loader=unloadable).run()
    assert (again["computed"], again["up_to_date"], spy.images) == (0, 3, 0)

    # one changed modality file and one deleted case: exactly those two are computed again
    first, second = sorted(brats["cases"])[:2]
    flair = brats["cases"][first].images["flair"]
    img = nib.load(str(flair))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 1.5, img.affine), str(flair))
    shutil.rmtree(cache_dir / second)
    spy = SpyGenerator(_fallback())
    third = _runner(brats, root, spy).run()
    assert (third["computed"], third["up_to_date"]) == (2, 1) and spy.images > 0


def test_sections(brats, tmp_path):
    summary = _runner(brats, tmp_path / "cache", _fallback(), sections=("validation", "unknown")).run()
    assert summary["cases"] == 1 and summary["computed"] == 1
    (partition,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len([p for p in partition.iterdir() if p.is_dir()]) == 1


def _with_broken_case(brats, tmp_path):
    """A copy of the dataset whose first training case has a truncated FLAIR file; returns (root, datalist, id)."""
    root = tmp_path / "data"
    shutil.copytree(brats["root"], root)
    datalist = json.loads((root / "datalist.json").read_text())
    bad = datalist["training"][0]
    flair = root / bad["image"][0]
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size // 3])
    return root, root / "datalist.json", bad["case_id"], flair


@pytest.mark.parametrize("continue_on_error", [False, True])
def test_bad_case_stops_or_is_skipped_and_the_manifest_is_written(brats, tmp_path, continue_on_error):
    root, datalist, bad, flair = _with_broken_case(brats, tmp_path)
    prior = SamPrior(_fallback(), window={"preset": "mr_percentile", "channels": 0})
    runner = PriorPrecompute(datalist, root, tmp_path / "cache", prior, progress=False,
                             continue_on_error=continue_on_error)
    with pytest.raises(Exception) as err:
        runner.run()
    line = error_line(err.value)
    assert str(flair) in line and "cannot be read" in line
    manifest = runner.cached.cache.cache_dir / "manifest.json"
    # stopping at the first (bad) case leaves nothing to list; going on past it computes the other two
    if not continue_on_error:
        assert not manifest.exists()
    else:
        assert set(json.loads(manifest.read_text())["cases"]) == set(brats["cases"]) - {bad}
        assert bad in str(err.value)
        last = json.loads((tmp_path / "cache" / "last_run.json").read_text())
        assert (last["computed"], last["failed"]) == (2, 1) and str(flair) in last["errors"][bad]


def _truncate_one_prior(runner) -> tuple[str, Path]:
    case_id = sorted(p.name for p in runner.cached.cache.cache_dir.iterdir() if p.is_dir())[0]
    target = _kind_file(runner.cached.cache.cache_dir / case_id)
    target.write_bytes(target.read_bytes()[:300])  # e.g. a copy of the cache cut short by a full disk
    return case_id, target


def test_truncated_prior_is_recomputed_not_up_to_date(brats, tmp_path):
    """"Up to date" means verified: a prior cut short is recomputed, reported, and the manifest lists a good file."""
    runner = _runner(brats, tmp_path / "cache", _fallback())
    runner.run()
    case_id, target = _truncate_one_prior(runner)
    spy = SpyGenerator(_fallback())
    again = _runner(brats, tmp_path / "cache", spy)
    summary = again.run()
    assert (summary["computed"], summary["up_to_date"]) == (1, 2) and spy.images > 0
    assert list(summary["recomputed_bad"]) == [case_id] and str(target) in summary["recomputed_bad"][case_id]
    assert json.loads((tmp_path / "cache" / "last_run.json").read_text())["recomputed_bad"] == summary["recomputed_bad"]
    manifest = json.loads(open(summary["manifest"]).read())
    listed = manifest["cases"][case_id]
    good = again.cached.cache.cache_dir / case_id / listed["files"]["sam_seg_prior"]
    assert hashlib.sha256(good.read_bytes()).hexdigest() == listed["checksums"]["sam_seg_prior"]["sha256"]
    assert again.cached.cache.status(case_id, [f["path"] for f in listed["inputs"]]).current


def test_truncated_prior_in_a_read_only_cache_is_refused_naming_it(brats, tmp_path, monkeypatch):
    import bundle.priors.cache as cache_module
    from bundle.errors import InputError
    from bundle.folders import OutputFolderError

    runner = _runner(brats, tmp_path / "cache", _fallback())
    runner.run()
    _, target = _truncate_one_prior(runner)

    def read_only(folder, required_bytes=0, what="output folder"):  # root ignores modes; the drill drops root
        raise OutputFolderError(os.fspath(folder), f"{what} is not writable: Read-only file system")

    monkeypatch.setattr(cache_module, "check_writable_folder", read_only)
    spy = SpyGenerator(_fallback())
    with pytest.raises(InputError) as err:
        _runner(brats, tmp_path / "cache", spy).run()
    line = error_line(err.value)
    assert line.startswith(f"ERROR: {target}: has 300 bytes") and "read-only" in line, line
    assert spy.images == 0


def test_up_to_date_cache_on_a_read_only_disk(brats, tmp_path):
    """Nothing to compute: no file of the cache is written (a read-only copy of a finished cache works)."""
    cache_dir = tmp_path / "cache"
    _runner(brats, cache_dir, _fallback()).run()
    files = {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*") if p.is_file()}
    for folder in [cache_dir, *(p for p in cache_dir.rglob("*") if p.is_dir())]:
        folder.chmod(0o555)
    try:
        summary = _runner(brats, cache_dir, _fallback()).run()
    finally:
        for folder in [cache_dir, *(p for p in cache_dir.rglob("*") if p.is_dir())]:
            folder.chmod(0o755)
    assert (summary["computed"], summary["up_to_date"]) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*") if p.is_file()} == files


def test_tiny_sam_run(brats, tmp_path, shapes_sam_checkpoint):
    # the shapes-trained tiny SAM: random weights give only empty masks, hence all-zero priors
    settings = PriorSettings(sam_model_type="tiny", sam_checkpoint=str(shapes_sam_checkpoint), sam_autocast="none",
                             amg={"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    generator = settings.mask_generator("cpu")
    spy = SpyGenerator(generator)
    runner = _runner(brats, tmp_path / "cache", spy, sections=("training",))
    summary = runner.run()
    cache_dir = runner.cached.cache.cache_dir
    assert cache_dir.name.startswith("tiny-")
    assert (summary["computed"], summary["generator"]) == (1, "sam_automatic_masks") and spy.images > 0
    manifest = json.loads(open(summary["manifest"]).read())
    sam = manifest["signature"]["prior"]["generator"]["sam"]
    assert sam["model_type"] == "tiny"
    assert sam["checkpoint_sha256"] == hashlib.sha256(shapes_sam_checkpoint.read_bytes()).hexdigest()
    for case_id in manifest["cases"]:
        assert nib.load(str(_kind_file(cache_dir / case_id))).get_fdata().max() > 0
    seen = spy.images
    again = _runner(brats, tmp_path / "cache", spy, sections=("training",)).run()
    assert (again["computed"], again["up_to_date"], spy.images) == (0, 1, seen)


def test_progress_bar_shows_slices_per_second(brats, tmp_path, capsys):
    prior = SamPrior(_fallback(), window="mr_percentile")
    PriorPrecompute(brats["datalist"], brats["root"], tmp_path / "cache", prior, progress=True).run()
    err = capsys.readouterr().err
    total = sum(e["num_slices"] for s in ("training", "validation", "testing")
                for e in json.loads(open(brats["datalist"]).read())[s])
    assert "slice/s" in err and f"{total}/{total}" in err


def test_missing_datalist(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_datalist.py") as err:
        PriorPrecompute(tmp_path / "nope.json", tmp_path, tmp_path / "cache", SamPrior(_fallback()))
    assert str(tmp_path / "nope.json") in str(err.value)


def test_bundle_cli(brats, tmp_path, tiny_sam_checkpoint):
    """``python -m monai.bundle run precompute`` with the overrides a user passes on the command line."""
    full = json.loads(open(brats["datalist"]).read())
    one_case = {k: v for k, v in full.items() if k not in ("validation", "testing")}
    datalist = write_datalist(one_case, tmp_path / "one_case.json")
    cache_dir = tmp_path / "priors"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "precompute",
        "--config_file", repr([os.path.join(REPO, "configs", f) for f in ("sam_priors.json", "precompute_priors.json")]),
        "--bundle_root", str(tmp_path),
        "--dataset_dir", str(brats["root"]),
        "--datalist", datalist,
        "--prior_cache_dir", str(cache_dir),
        "--device", "cpu",
        "--priors#sam_model_type", "tiny",
        "--priors#sam_checkpoint", str(tiny_sam_checkpoint),
        "--priors#amg#points_per_side", "4",
        "--priors#slices_per_batch", "4",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "slice/s" in result.stderr
    (case_id,) = [e["case_id"] for e in one_case["training"]]
    last = json.loads((cache_dir / "last_run.json").read_text())
    assert (last["computed"], last["cases"], last["generator"]) == (1, 1, "sam_automatic_masks")
    case_dir = cache_dir / last["partition"] / case_id
    assert set(os.listdir(case_dir)) == {*_entry(case_dir)["files"].values(), "entry.json"}
    signature = json.loads((cache_dir / last["partition"] / "manifest.json").read_text())["signature"]["prior"]
    assert signature["generator"]["points_per_side"] == 4 and signature["generator"]["sam"]["model_type"] == "tiny"
    assert signature["generator"]["pred_iou_thresh"] == 0.5  # the config's value where no override was given
