"""Tests of bundle.priors.cache: the on-disk prior cache, its keys, and recovery from crashes and damaged files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import bundle.priors.cache as cache_module
from bundle.data.case_ids import source_files_of
from bundle.errors import InputError
from bundle.folders import OutputFolderError
from bundle.priors.cache import ENTRY_FORMAT, PARTITION_NAME, CachedSamPriord, PriorCache, file_fingerprint
from bundle.priors.precompute import default_loader
from bundle.priors.transforms import SamPrior
from bundle.sam.fallback import RegionProposalMasks

AFFINE = np.array([[-1.0, 0.0, 0.0, 30.0], [0.0, -1.0, 0.0, 20.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
KINDS = ("sam_seg_prior", "sam_boundary_prior")
#: a cached file's name: its kind (or array name), the first 12 hex digits of its sha256, its extension
CACHED_NAME = re.compile(r"^(?P<kind>[a-z_]+)\.(?P<digest>[0-9a-f]{12})\.(nii\.gz|npy)$")


class SpyGenerator:
    """The real fallback generator, counting the slices it is asked for."""

    def __init__(self, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.inner = RegionProposalMasks(**kwargs)
        self.images = 0

    def generate_batch(self, images):
        self.images += len(images)
        return self.inner.generate_batch(images)

    def signature(self):
        return self.inner.signature()


def _volume(seed=0, shape=(40, 36, 5)) -> np.ndarray:
    h, w, d = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    vol = np.full(shape, 10.0, np.float32)
    for k in range(d):
        cy, cx, r = rng.uniform(12, 24), rng.uniform(12, 24), rng.uniform(5, 10)
        vol[..., k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 400.0
    return vol + rng.normal(0, 4, shape).astype(np.float32)


def _write(path, data):
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


@pytest.fixture
def case(tmp_path):
    """A real NIfTI case and its datalist entry."""
    path = _write(tmp_path / "case_1.nii.gz", _volume())
    return {"image": str(path), "case_id": "case_1"}


def _loaded(entry):
    return default_loader()(dict(entry))


def _cached(cache_dir, generator=None, window="mr_percentile", **prior_kwargs):
    generator = generator if generator is not None else SpyGenerator()
    return CachedSamPriord(keys="image", cache_dir=cache_dir, prior=SamPrior(generator, window=window, **prior_kwargs))


def _case_dir(cache_dir, case_id="case_1"):
    """A case's folder in the partition of the default test configuration."""
    return _cached(cache_dir).cache.cache_dir / case_id


def _files(folder):
    return {p.name for p in folder.iterdir()}


def _entry(case_dir) -> dict:
    return json.loads((case_dir / "entry.json").read_text())


def _listed(case_dir) -> set[str]:
    """The files the case's entry lists."""
    return set(_entry(case_dir)["files"].values())


def _kind_file(case_dir, kind="sam_seg_prior"):
    return case_dir / _entry(case_dir)["files"][kind]


def test_miss_writes_one_nifti_per_kind_and_entry(tmp_path, case):
    cache_dir = tmp_path / "cache"
    spy = SpyGenerator()
    data = _loaded(case)
    out = _cached(cache_dir, spy)(data)
    prior = out["image_prior"]
    assert spy.images == 5 and prior.shape == (2, 40, 36, 5)
    case_dir = _case_dir(cache_dir)
    assert _files(case_dir) == _listed(case_dir) | {"entry.json"}  # no temporary file left
    entry = _entry(case_dir)
    assert entry["format"] == ENTRY_FORMAT
    for kind in KINDS:  # named after its content, with its size and sha256 recorded
        name = entry["files"][kind]
        data_bytes = (case_dir / name).read_bytes()
        sha = hashlib.sha256(data_bytes).hexdigest()
        assert CACHED_NAME.match(name)["kind"] == kind and CACHED_NAME.match(name)["digest"] == sha[:12]
        assert entry["checksums"][kind] == {"size": len(data_bytes), "sha256": sha}
    seg, bnd = (nib.load(str(_kind_file(case_dir, k))) for k in KINDS)
    assert seg.get_data_dtype() == np.float32 and bnd.get_data_dtype() == np.uint8
    np.testing.assert_allclose(seg.affine, data["image"].affine.numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), prior[0].numpy())
    np.testing.assert_array_equal(np.asarray(bnd.dataobj), prior[1].numpy())
    assert _files(cache_dir) == {case_dir.parent.name} and case_dir.parent.name.startswith("region_proposals-")
    partition = json.loads((case_dir.parent / PARTITION_NAME).read_text())
    entry = json.loads((case_dir / "entry.json").read_text())
    assert partition["signature_sha256"] == entry["signature_sha256"] == _cached(cache_dir).cache.digest
    assert entry["case_id"] == "case_1" and entry["kinds"] == ["sam_seg_prior", "sam_boundary_prior"]
    assert entry["shape"] == [40, 36, 5] and entry["slices_sent_to_generator"] == 5
    (fp,) = entry["inputs"]
    assert fp["path"] == str(tmp_path / "case_1.nii.gz")
    assert fp["sha256"] == hashlib.sha256((tmp_path / "case_1.nii.gz").read_bytes()).hexdigest()
    assert entry["signature"]["prior"]["generator"]["generator"] == "region_proposals"


def test_second_lookup_is_a_hit(tmp_path, case):
    cache_dir = tmp_path / "cache"
    first = _cached(cache_dir)(_loaded(case))["image_prior"]
    spy = SpyGenerator()
    data = _loaded(case)
    second = _cached(cache_dir, spy)(data)["image_prior"]
    assert spy.images == 0
    assert isinstance(second, MetaTensor)
    assert torch.equal(second.as_tensor(), first.as_tensor())
    assert torch.equal(second.affine, data["image"].affine)
    assert second.meta["channel_names"] == ["sam_seg_prior", "sam_boundary_prior"]
    assert second.meta["filename_or_obj"] == data["image"].meta["filename_or_obj"]


CHANGES = [
    ("generator parameter", {"generator_kwargs": {"pred_iou_thresh": 0.6}}),
    ("window", {"window": "minmax"}),
    ("window bound", {"window": {"preset": "mr_percentile", "high": 99.0}}),
    ("kinds", {"kinds": ["sam_seg_prior"]}),
]


@pytest.mark.parametrize("label, change", CHANGES, ids=[c[0] for c in CHANGES])
def test_configuration_change_recomputes_into_its_own_partition(tmp_path, case, label, change):
    cache_dir = tmp_path / "cache"
    first = _cached(cache_dir)
    first(_loaded(case))
    change = dict(change)
    spy = SpyGenerator(**change.pop("generator_kwargs", {}))
    second = _cached(cache_dir, spy, **change)
    second(_loaded(case))
    assert spy.images == 5
    assert second.cache.cache_dir != first.cache.cache_dir
    # both configurations stay cached side by side: switching back recomputes nothing
    for transform in (first, second):
        entry = json.loads((transform.cache.cache_dir / "case_1" / "entry.json").read_text())
        assert entry["signature_sha256"] == transform.cache.digest
    spy = SpyGenerator()
    _cached(cache_dir, spy)(_loaded(case))
    assert spy.images == 0


def test_new_input_content_recomputes(tmp_path, case):
    cache_dir = tmp_path / "cache"
    _cached(cache_dir)(_loaded(case))
    _write(case["image"], _volume(seed=1))
    spy = SpyGenerator()
    _cached(cache_dir, spy)(_loaded(case))
    assert spy.images == 5


def test_fingerprints_reuse_sha_when_size_and_mtime_match(tmp_path, case, monkeypatch):
    cache_dir = tmp_path / "cache"
    _cached(cache_dir)(_loaded(case))
    hashed = []
    real = cache_module.path_sha256
    monkeypatch.setattr(cache_module, "path_sha256", lambda p: hashed.append(p) or real(p))
    spy = SpyGenerator()
    _cached(cache_dir, spy)(_loaded(case))
    assert spy.images == 0 and hashed == []  # same path, size and mtime: the stored sha256 is trusted
    # touched (new mtime) but the same bytes: hashed again, and still a hit
    stat = os.stat(case["image"])
    os.utime(case["image"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _cached(cache_dir, spy)(_loaded(case))
    assert spy.images == 0 and len(hashed) == 1


def _fail_on_second(real, calls):
    def fake(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    return fake


def _crash_nib_save(monkeypatch):
    monkeypatch.setattr(cache_module.nib, "save", _fail_on_second(nib.save, []))


def _crash_replace(monkeypatch):
    real_replace, calls = os.replace, []

    def fake(src, dst, *args, **kwargs):
        if str(dst).endswith(".nii.gz"):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError("rename failed (simulated)")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fake)


def _crash_entry(monkeypatch):
    real = cache_module.write_text_atomic

    def fail(path, *args, **kwargs):
        if os.path.basename(path) == "entry.json":
            raise OSError("killed before the entry (simulated)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_module, "write_text_atomic", fail)


CRASHES = [("nib.save", _crash_nib_save), ("os.replace", _crash_replace), ("entry write", _crash_entry)]


@pytest.mark.parametrize("label, crash", CRASHES, ids=[c[0] for c in CRASHES])
def test_crash_mid_store_leaves_no_usable_partial_case(tmp_path, case, monkeypatch, label, crash):
    cache_dir = tmp_path / "cache"
    with monkeypatch.context() as m:
        crash(m)
        with pytest.raises(OSError, match="simulated"):
            _cached(cache_dir)(_loaded(case))
    case_dir = _case_dir(cache_dir)
    files = _files(case_dir) - {".store.lock"}
    assert "entry.json" not in files
    assert all(CACHED_NAME.match(f) for f in files), f"temporary files left behind: {files}"
    for name in files:  # whatever final file exists is complete
        assert nib.load(str(case_dir / name)).get_fdata().shape == (40, 36, 5)
    spy = SpyGenerator()
    prior = _cached(cache_dir, spy)(_loaded(case))["image_prior"]
    assert spy.images == 5 and prior.shape == (2, 40, 36, 5)
    assert _files(case_dir) == _listed(case_dir) | {"entry.json"}


def test_crash_while_replacing_a_current_case(tmp_path, case, monkeypatch):
    """A rewrite interrupted half way leaves the previous entry whole: its files are never written over (a new
    version goes beside them), so it still vouches for exactly what it lists."""
    cache_dir = tmp_path / "cache"
    first = _cached(cache_dir)(_loaded(case))["image_prior"]
    case_dir = _case_dir(cache_dir)
    before = _entry(case_dir)
    cropped = _loaded(case)
    cropped["image"] = cropped["image"][:, :32]  # same files and configuration, another grid: recomputed
    with monkeypatch.context() as m:
        _crash_nib_save(m)
        with pytest.raises(OSError, match="simulated"):
            _cached(cache_dir)(cropped)
    assert _entry(case_dir) == before
    spy = SpyGenerator()
    prior = _cached(cache_dir, spy)(_loaded(case))["image_prior"]
    assert spy.images == 0 and torch.equal(prior.as_tensor(), first.as_tensor())
    _cached(cache_dir)(cropped)  # the next write of the case removes what the interrupted one left
    assert _files(case_dir) - {".store.lock"} == _listed(case_dir) | set(before["files"].values()) | {"entry.json"}


@pytest.mark.parametrize("content", [b'{"case_id": "case_1", "sig', b"\x89\xff\xfe garbage", b"[1, 2]", b"{}"],
                         ids=["truncated", "binary", "list", "empty object"])
def test_corrupted_entry_is_recomputed(tmp_path, case, caplog, content):
    cache_dir = tmp_path / "cache"
    _cached(cache_dir)(_loaded(case))
    (_case_dir(cache_dir) / "entry.json").write_bytes(content)
    spy = SpyGenerator()
    with caplog.at_level(logging.WARNING, logger="bundle.priors.cache"):
        _cached(cache_dir, spy)(_loaded(case))
    assert spy.images == 5
    assert any("entry.json" in r.getMessage() for r in caplog.records)
    assert json.loads((_case_dir(cache_dir) / "entry.json").read_text())["case_id"] == "case_1"
    assert _cached(cache_dir).cache.write_manifest().is_file()  # the manifest copes with what is there now


def test_damaged_prior_file_is_recomputed(tmp_path, case, caplog):
    cache_dir = tmp_path / "cache"
    _cached(cache_dir)(_loaded(case))
    target = _kind_file(_case_dir(cache_dir))
    target.write_bytes(target.read_bytes()[:200])  # truncated, e.g. by a full disk while copying the cache
    spy = SpyGenerator()
    with caplog.at_level(logging.WARNING, logger="bundle.priors.cache"):
        prior = _cached(cache_dir, spy)(_loaded(case))["image_prior"]
    assert spy.images == 5 and prior.shape == (2, 40, 36, 5)
    assert any(f"{target}: has 200 bytes" in r.getMessage() for r in caplog.records)
    assert nib.load(str(_kind_file(_case_dir(cache_dir)))).get_fdata().shape == (40, 36, 5)


def test_file_changed_in_place_with_its_size_is_recomputed(tmp_path, case, caplog):
    """Same size, one byte changed: only the sha256 tells (a NIfTI that still parses would be used silently)."""
    cache_dir = tmp_path / "cache"
    _cached(cache_dir)(_loaded(case))
    target = _kind_file(_case_dir(cache_dir), "sam_boundary_prior")
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    spy = SpyGenerator()
    with caplog.at_level(logging.WARNING, logger="bundle.priors.cache"):
        _cached(cache_dir, spy)(_loaded(case))
    assert spy.images == 5
    assert any(f"{target}: does not match the sha256" in r.getMessage() for r in caplog.records)


def test_entry_without_checksums_is_not_trusted(tmp_path, case, caplog):
    """An entry of an older bundle (no sizes, no sha256) cannot vouch for its files: recomputed."""
    cache_dir = tmp_path / "cache"
    _cached(cache_dir)(_loaded(case))
    case_dir = _case_dir(cache_dir)
    entry = _entry(case_dir)
    del entry["format"], entry["checksums"]
    (case_dir / "entry.json").write_text(json.dumps(entry))
    spy = SpyGenerator()
    with caplog.at_level(logging.WARNING, logger="bundle.priors.cache"):
        _cached(cache_dir, spy)(_loaded(case))
    assert spy.images == 5 and _entry(case_dir)["format"] == ENTRY_FORMAT
    assert any("older version of the bundle" in r.getMessage() for r in caplog.records)


def _read_only(monkeypatch):
    """The cache's write probe fails as on a read-only disk (root ignores file modes; the drills drop root)."""
    def refuse(folder, required_bytes=0, what="output folder"):
        raise OutputFolderError(os.fspath(folder), f"{what} is not writable: Read-only file system")

    monkeypatch.setattr(cache_module, "check_writable_folder", refuse)


def test_read_only_cache_refuses_a_bad_entry_naming_the_file(tmp_path, case, monkeypatch):
    cache_dir = tmp_path / "cache"
    _cached(cache_dir)(_loaded(case))
    target = _kind_file(_case_dir(cache_dir))
    target.write_bytes(target.read_bytes()[:100])
    _read_only(monkeypatch)
    spy = SpyGenerator()
    with pytest.raises(InputError) as err:
        _cached(cache_dir, spy)(_loaded(case))
    assert err.value.path == str(target) and "has 100 bytes" in err.value.problem and "read-only" in err.value.problem
    assert spy.images == 0  # refused before any SAM work


def test_read_only_cache_refuses_an_entry_without_checksums(tmp_path, case, monkeypatch):
    cache_dir = tmp_path / "cache"
    _cached(cache_dir)(_loaded(case))
    case_dir = _case_dir(cache_dir)
    entry = _entry(case_dir)
    del entry["format"], entry["checksums"]
    (case_dir / "entry.json").write_text(json.dumps(entry))
    _read_only(monkeypatch)
    with pytest.raises(InputError) as err:
        _cached(cache_dir, SpyGenerator())(_loaded(case))
    assert err.value.path == str(case_dir / "entry.json")
    assert "older version of the bundle" in err.value.problem and "read-only" in err.value.problem


def test_tidy_removes_only_stale_temporary_files(tmp_path, case):
    transform = _cached(tmp_path / "cache")
    transform(_loaded(case))
    case_dir = _case_dir(tmp_path / "cache")
    dead = case_dir / ".sam_seg_prior.tmp-999999999-0badc0de.nii.gz"  # no such process
    live = case_dir / f".sam_seg_prior.tmp-{os.getpid()}-0badc0de.nii.gz"
    other = case_dir / ".keep"
    for path in (dead, live, other):
        path.write_bytes(b"x")
        os.utime(path, (1, 1))
    orphan = case_dir / "sam_seg_prior.0123456789ab.nii.gz"  # renamed into place by a run killed before its entry
    orphan.write_bytes(b"x")
    assert transform.cache.tidy(orphans=False) == [dead] and orphan.exists()
    assert transform.cache.tidy() == [orphan]
    assert live.exists() and other.exists() and transform.cache.is_current("case_1", [case["image"]])


def test_read_only_cache_with_good_entries_is_read(tmp_path, case, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = _cached(cache_dir)(_loaded(case))["image_prior"]
    _read_only(monkeypatch)
    spy = SpyGenerator()
    again = _cached(cache_dir, spy)(_loaded(case))["image_prior"]
    assert spy.images == 0 and torch.equal(again.as_tensor(), first.as_tensor())


def test_sha256_of_a_cached_file_is_computed_once_per_process(tmp_path, case, monkeypatch):
    cache_dir = tmp_path / "cache"
    _cached(cache_dir)(_loaded(case))
    import bundle.priors.cache_files as cache_files

    monkeypatch.setattr(cache_files, "_VERIFIED", {})  # a fresh process
    hashed = []
    real = cache_files.file_sha256
    monkeypatch.setattr(cache_files, "file_sha256", lambda p: hashed.append(os.path.basename(p)) or real(p))
    for _ in range(3):
        _cached(cache_dir)(_loaded(case))
    assert sorted(hashed) == sorted(_entry(_case_dir(cache_dir))["files"].values())  # each file once
    target = _kind_file(_case_dir(cache_dir))
    target.write_bytes(target.read_bytes())  # rewritten (new mtime): hashed again, still good
    _cached(cache_dir)(_loaded(case))
    assert len(hashed) == 3


def _store_volume(cache, source, value):
    prior = MetaTensor(torch.full((2, 4, 4, 3), float(value)), affine=torch.eye(4, dtype=torch.float64),
                       meta={"channel_names": list(KINDS)})
    return cache.store("case_1", [str(source)], prior)


def test_rewrite_keeps_the_replaced_generation_for_its_readers(tmp_path):
    """A new version is written beside the old one; the entry is replaced in one rename; the files of the entry
    it replaced stay (a reader may hold that entry), the ones before are removed."""
    source = _write(tmp_path / "image.nii.gz", _volume())
    cache = PriorCache(tmp_path / "cache", {"kinds": list(KINDS)})
    case_dir = cache.case_dir("case_1")
    generations = [set(_store_volume(cache, source, value)["files"].values()) for value in (1, 2, 3)]
    assert len(set.union(*generations)) == 6  # other content, other names
    assert _files(case_dir) == generations[1] | generations[2] | {"entry.json"}
    assert float(cache.load("case_1")[0].max()) == 3.0


def test_reader_holding_an_old_entry_reads_the_new_one(tmp_path, monkeypatch):
    """A reader that read an entry two rewrites ago finds its files gone and reads the entry again."""
    source = _write(tmp_path / "image.nii.gz", _volume())
    cache = PriorCache(tmp_path / "cache", {"kinds": list(KINDS)})
    _store_volume(cache, source, 1)
    real, seen = cache._entry_and_text, []

    def racing(case_id):  # the writer rewrites the case twice right after the reader's first read of the entry
        result = real(case_id)
        if not seen:
            seen.append(result[0])
            _store_volume(cache, source, 2)
            _store_volume(cache, source, 3)
        return result

    monkeypatch.setattr(cache, "_entry_and_text", racing)
    assert float(cache.load("case_1")[0].max()) == 3.0
    assert not any((cache.case_dir("case_1") / name).exists() for name in seen[0]["files"].values())


def test_cached_shape_mismatch_is_recomputed(tmp_path, case, caplog):
    cache_dir = tmp_path / "cache"
    transform = _cached(cache_dir)
    data = _loaded(case)
    wrong = MetaTensor(torch.zeros(2, 20, 36, 5), affine=data["image"].affine,
                       meta={"channel_names": ["sam_seg_prior", "sam_boundary_prior"]})
    transform.cache.store("case_1", source_files_of(data["image"]), wrong)
    spy = SpyGenerator()
    with caplog.at_level(logging.WARNING, logger="bundle.priors.cache"):
        prior = _cached(cache_dir, spy)(data)["image_prior"]
    assert spy.images == 5 and prior.shape == (2, 40, 36, 5) and prior.any()
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    assert json.loads((_case_dir(cache_dir) / "entry.json").read_text())["shape"] == [40, 36, 5]


def test_manifest_lists_cases_and_generator(tmp_path):
    cache_dir = tmp_path / "cache"
    transform = _cached(cache_dir)
    for n in (1, 2):
        path = _write(tmp_path / f"case_{n}.nii.gz", _volume(seed=n))
        transform(_loaded({"image": str(path), "case_id": f"case_{n}"}))
    manifest = json.loads(transform.cache.write_manifest().read_text())
    assert set(manifest["cases"]) == {"case_1", "case_2"}
    listed = manifest["cases"]["case_2"]
    assert {k: CACHED_NAME.match(v)["kind"] for k, v in listed["files"].items()} == {k: k for k in KINDS}
    assert listed["checksums"] == _entry(transform.cache.case_dir("case_2"))["checksums"]
    assert manifest["signature"]["prior"]["generator"]["generator"] == "region_proposals"
    assert manifest["signature_sha256"] == transform.cache.digest
    path = transform.cache.cache_dir / "manifest.json"
    mtime = path.stat().st_mtime_ns
    assert transform.cache.write_manifest() == path and path.stat().st_mtime_ns == mtime  # unchanged: not rewritten


def test_multimodal_image_is_keyed_by_every_file(tmp_path):
    paths = [_write(tmp_path / f"c7_{m}.nii.gz", _volume(seed=s)) for s, m in enumerate(("flair", "t1", "t1ce", "t2"))]
    entry = {"image": [str(p) for p in paths], "case_id": "c7"}
    cache_dir = tmp_path / "cache"
    data = _loaded(entry)
    assert data["image"].shape[0] == 4 and source_files_of(data["image"]) == [str(p) for p in paths]
    _cached(cache_dir)(data)
    assert len(json.loads((_case_dir(cache_dir, "c7") / "entry.json").read_text())["inputs"]) == 4
    _write(paths[2], _volume(seed=9))  # only T1ce changed, FLAIR feeds SAM: still recomputed (inputs changed)
    spy = SpyGenerator()
    _cached(cache_dir, spy)(_loaded(entry))
    assert spy.images == 5


def test_image_without_source_file_is_computed_not_stored(tmp_path):
    cache_dir = tmp_path / "cache"
    spy = SpyGenerator()
    image = MetaTensor(torch.from_numpy(_volume())[None])
    out = _cached(cache_dir, spy)({"image": image, "case_id": "anonymous"})
    assert out["image_prior"].shape == (2, 40, 36, 5) and spy.images == 5
    assert not list(cache_dir.rglob("anonymous"))


def test_series_folder_fingerprint(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"IM{i}.dcm").write_bytes(bytes([i]) * 100)
    first = file_fingerprint(series)
    assert first["size"] == 300 and file_fingerprint(series)["sha256"] == first["sha256"]
    (series / "IM1.dcm").write_bytes(b"\x07" * 100)
    assert file_fingerprint(series)["sha256"] != first["sha256"]


def test_series_rewritten_in_place_is_not_taken_for_unchanged(tmp_path):
    """Rewriting a file of a series in place keeps the folder's size and mtime: the fast path must look inside."""
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"IM{i}.dcm").write_bytes(bytes([i]) * 100)
    old = file_fingerprint(series)
    folder_mtime = os.stat(series).st_mtime_ns
    (series / "IM1.dcm").write_bytes(b"\x07" * 100)  # same size, same name: the folder itself is not modified
    stat = os.stat(series / "IM1.dcm")
    os.utime(series / "IM1.dcm", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert os.stat(series).st_mtime_ns == folder_mtime
    assert file_fingerprint(series, previous=old)["sha256"] != old["sha256"]


class _OddGenerator(SpyGenerator):
    def signature(self):
        return {**self.inner.signature(), "threshold": np.float32(0.5)}  # a numpy scalar is not JSON


def test_signature_that_is_not_json_is_refused(tmp_path):
    with pytest.raises(TypeError, match="not plain JSON"):
        _cached(tmp_path / "cache", _OddGenerator())
    with pytest.raises(TypeError, match="not plain JSON"):
        PriorCache(tmp_path / "cache", {"generator": {"model": object()}})


def test_cache_cli_lists_and_prunes_partitions(tmp_path, case, capsys):
    from bundle.priors.cache_cli import list_partitions, main

    cache_dir = tmp_path / "cache"
    default, minmax = _cached(cache_dir), _cached(cache_dir, window="minmax")
    for transform in (default, minmax):
        transform(_loaded(case))
    (cache_dir / "stray").mkdir()
    rows = {r["partition"]: r for r in list_partitions(cache_dir)}
    assert set(rows) == {default.cache.cache_dir.name, minmax.cache.cache_dir.name, "stray"}
    row = rows[default.cache.cache_dir.name]
    assert (row["generator"], row["cases"], row["settings"]["window.preset"]) == ("region_proposals", 1, "mr_percentile")
    assert row["bytes"] > 0 and rows["stray"]["generator"] is None
    assert main(["list", str(cache_dir)]) == 0
    listing = capsys.readouterr().out
    assert "window.preset" in listing and "minmax" in listing and "cases=1" in listing  # what tells them apart
    assert main(["prune", str(cache_dir), minmax.cache.cache_dir.name]) == 0
    assert not minmax.cache.cache_dir.exists() and default.cache.cache_dir.is_dir()
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([default.cache.cache_dir.name, "stray"])
    assert main(["prune", str(cache_dir), "stray"]) == 1 and (cache_dir / "stray").is_dir()  # not a partition
    assert "not a usable partition (no partition.json); pass --force" in capsys.readouterr().err
    assert main(["prune", str(cache_dir), "nothing"]) == 1 and "no such partition" in capsys.readouterr().err
    assert main(["prune", str(cache_dir), "stray", "--force"]) == 0 and not (cache_dir / "stray").exists()


@pytest.mark.parametrize("record", [b"[1, 2]", b'{"signature": {"prior": 3}}', b'{"signature_sha256": "ab"}',
                                    b'{"signature": {"prior": {"generator": "x"}}}', b"{\"sig", b"\xff\xfe",
                                    None], ids=["list", "prior number", "no signature", "generator string",
                                                "not JSON", "binary", "missing"])
def test_cache_cli_survives_and_names_a_malformed_partition(tmp_path, case, capsys, record):
    from bundle.priors.cache_cli import main

    cache_dir = tmp_path / "cache"
    good = _cached(cache_dir)
    good(_loaded(case))
    bad = cache_dir / "copied-0123456789ab"
    (bad / "case_1").mkdir(parents=True)
    if record is not None:
        (bad / "partition.json").write_bytes(record)
    assert main(["list", str(cache_dir)]) == 0
    listing = capsys.readouterr().out
    (line,) = [text for text in listing.splitlines() if text.startswith(bad.name)]
    assert "not a usable partition" in line and ("no partition.json" if record is None else str(bad)) in line
    assert f"{good.cache.cache_dir.name}  generator=region_proposals" in listing
    assert main(["list", str(cache_dir), "--json"]) == 0
    rows = {r["partition"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[bad.name]["problem"] and rows[good.cache.cache_dir.name]["problem"] is None
    assert main(["prune", str(cache_dir), bad.name]) == 1 and bad.is_dir()
    assert "--force" in capsys.readouterr().err
    assert main(["prune", str(cache_dir), bad.name, "--force"]) == 0 and not bad.exists()
    assert good.cache.cache_dir.is_dir()


def test_extra_arrays_are_stored_with_the_case_and_needed_by_it(tmp_path):
    source = tmp_path / "image.nii.gz"
    _write(source, _volume())
    cache = PriorCache(tmp_path / "cache", {"kinds": ["a_map"], "what": "test"}, label="features-tiny")
    assert cache.cache_dir.name.startswith("features-tiny-")  # readable partition name, digest kept
    prior = MetaTensor(torch.ones(1, 4, 4, 3), affine=torch.eye(4, dtype=torch.float64),
                       meta={"channel_names": ["a_map"]})
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.store("case_1", [str(source)], prior, arrays={"rows": rows, "flags": np.array([True, False, True])})
    np.testing.assert_array_equal(cache.load_array("case_1", "rows"), rows)
    assert cache.load_array("case_1", "flags").dtype == bool
    assert cache.is_current("case_1", [str(source)])
    (cache.case_dir("case_1") / _entry(cache.case_dir("case_1"))["files"]["rows"]).unlink()  # computed again
    assert not cache.is_current("case_1", [str(source)])
    with pytest.raises(FileNotFoundError, match="nothing"):
        cache.load_array("case_1", "nothing")
    with pytest.raises(ValueError, match="also a prior kind"):
        cache.store("case_2", [str(source)], prior, arrays={"a_map": rows})


def test_uint8_priors_are_written_as_uint8(tmp_path):
    source = tmp_path / "image.nii.gz"
    _write(source, _volume())
    cache = PriorCache(tmp_path / "cache", {"kinds": ["labels"]})
    prior = MetaTensor(torch.full((1, 4, 4, 3), 3, dtype=torch.uint8), meta={"channel_names": ["labels"]})
    cache.store("case_1", [str(source)], prior)
    assert nib.load(cache.file("case_1", "labels")).get_data_dtype() == np.uint8


def test_list_names_partitions_without_a_generator_by_their_label(tmp_path):
    from bundle.priors.cache_cli import list_partitions

    source = tmp_path / "image.nii.gz"
    _write(source, _volume())
    signature = {"kinds": ["m"], "miner": {"engine": {"sam": {"model_type": "tiny", "checkpoint_sha256": "ab12"}}}}
    cache = PriorCache(tmp_path / "cache", signature, label="features-tiny")
    cache.store("case_1", [str(source)], MetaTensor(torch.zeros(1, 2, 2, 3), meta={"channel_names": ["m"]}))
    (row,) = list_partitions(tmp_path / "cache")
    assert (row["generator"], row["model"], row["checkpoint_sha256"], row["cases"]) == ("features-tiny", "tiny",
                                                                                       "ab12", 1)
