"""Tests of bundle.data.datalist_io: datalist faults name the datalist, the case and the problem."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import bundle.data.case_check as case_check
from bundle.data.datalist import build_datalist, write_datalist
from bundle.data.datalist_io import (
    check_case_ids,
    datalist_label_values,
    load_checked_section,
    read_datalist,
    section_entries,
)
from bundle.testing.phantom_writers import make_phantoms
from bundle.errors import InputError, MissingInputError, error_line


@pytest.fixture(scope="module")
def lits(tmp_path_factory):
    """Four phantom LiTS cases (size 32) and their datalist, written by the bundle's own tools."""
    root = tmp_path_factory.mktemp("lits")
    make_phantoms("lits", root, cases=4, size=32, seed=0)
    path = write_datalist(build_datalist("lits", root, 0.25, 0.25, seed=0, progress=False), root / "datalist.json")
    return root, path


def _write(tmp_path, content) -> str:
    path = tmp_path / "datalist.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_truncated_datalist(lits, tmp_path):
    text = Path(lits[1]).read_text()
    path = _write(tmp_path, text[: len(text) // 2])
    with pytest.raises(InputError) as info:
        read_datalist(path)
    message = str(info.value)
    assert message.startswith(f"{path}: datalist is not valid JSON: ") and "it is truncated" in message
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


@pytest.mark.parametrize(
    "content, fragment",
    [("", "datalist is empty"), ("[1, 2]", "is not a datalist: expected a JSON object")],
)
def test_not_a_datalist(tmp_path, content, fragment):
    path = _write(tmp_path, content)
    with pytest.raises(InputError, match=fragment):
        read_datalist(path)


def test_missing_datalist(tmp_path):
    with pytest.raises(MissingInputError, match="datalist not found; make it with scripts/prepare_datalist.py"):
        read_datalist(tmp_path / "nope.json")


def test_sections_and_missing_keys(tmp_path):
    datalist = {"training": [{"case_id": "a", "image": "a.nii.gz", "label": "a_seg.nii.gz"},
                             {"case_id": "b", "image": "b.nii.gz"}],
                "validation": [], "testing": "oops"}
    path = _write(tmp_path, datalist)
    with pytest.raises(InputError) as info:
        section_entries(datalist, "training", path)
    assert str(info.value) == f"{path}: training[1] (b): missing key 'label' (it has case_id, image)"
    assert error_line(info.value) == f"ERROR: {path}: training[1] (b): missing key 'label' (it has case_id, image)"
    assert section_entries(datalist, "training", path, required=("image",))[1]["case_id"] == "b"
    with pytest.raises(InputError, match="datalist section 'validation' is empty"):
        section_entries(datalist, "validation", path)
    with pytest.raises(InputError, match="section 'testing' is not a list"):
        section_entries(datalist, "testing", path)
    with pytest.raises(InputError, match=r"has no section 'extra' \(its sections: \['training', 'validation'\]\)"):
        section_entries(datalist, "extra", path)
    no_image = {"training": [{"label": "x_seg.nii.gz"}]}
    with pytest.raises(InputError, match=r"training\[0\]: missing key 'image' \(it has label\)"):
        section_entries(no_image, "training", path)


def test_colliding_case_ids(tmp_path):
    sections = {
        "training": [{"case_id": "c1", "image": "site_a/c1.nii.gz"}, {"image": "site_b/x/c2.nii.gz"}],
        "testing": [{"case_id": "c1", "image": "site_b/c1.nii.gz"}, {"image": "site_a/c2.nii.gz"}],
    }
    with pytest.raises(InputError) as info:
        check_case_ids(sections, tmp_path / "dl.json")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'dl.json'}: 2 case id(s) name different cases: ")
    assert "'c1' names training[0] (site_a/c1.nii.gz) and testing[0] (site_b/c1.nii.gz)" in message
    assert "'c2' names training[1] (site_b/x/c2.nii.gz) and testing[1] (site_a/c2.nii.gz)" in message
    repeated = {"training": [{"image": "a/c1.nii.gz"}, {"image": "a/c1.nii.gz"}]}  # oversampling: fine
    assert check_case_ids(repeated, "dl.json") == {"c1": ("a/c1.nii.gz",)}


@pytest.mark.parametrize("case_id, fragment", [("../escaped", "not a plain name"), ("..", "not a plain name"),
                                               ("a/b", "not a plain name"), ("case 1", "white space"),
                                               (7, "not a name")])
def test_case_id_that_is_not_a_plain_name(tmp_path, case_id, fragment):
    sections = {"training": [{"case_id": "c1", "image": "c1.nii.gz"}, {"case_id": case_id, "image": "c2.nii.gz"}]}
    with pytest.raises(InputError) as info:
        check_case_ids(sections, tmp_path / "dl.json")
    assert str(info.value).startswith(f"{tmp_path / 'dl.json'}: training[1]: case id {case_id!r} ")
    assert fragment in str(info.value)


def test_load_checked_section_trusts_the_record(lits, monkeypatch):
    root, path = lits
    monkeypatch.setattr(case_check, "read_header", lambda p: pytest.fail(f"{p} was read although unchanged"))
    entries = load_checked_section(path, "training", root)
    assert len(entries) == 2 and all(os.path.isabs(p) and os.path.isfile(p) for e in entries for p in
                                     (e["image"], e["label"]))
    assert datalist_label_values(path) == [0, 1, 2]


def test_load_checked_section_rechecks_a_changed_label(lits, tmp_path):
    root, path = lits
    datalist = read_datalist(path)
    entry = datalist["training"][0]
    label_path = os.path.join(root, entry["label"])
    original = Path(label_path).read_bytes()
    try:
        image = nib.load(label_path)
        data = np.asarray(image.dataobj).copy()
        data[0, 0, 0] = 7
        nib.save(nib.Nifti1Image(data, image.affine), label_path)
        with pytest.raises(InputError) as info:
            load_checked_section(path, "training", root)
        assert str(info.value) == f"{label_path}: label values [7] are not in the label set [0, 1, 2]"
    finally:
        Path(label_path).write_bytes(original)


# ---------------------------------------------------------------------------------------------------- label summaries


def _redraw_label(label_path: str) -> None:
    """An annotator's fix after the datalist was written: tumour (2) drawn into a slice that held nothing."""
    image = nib.load(label_path)
    data = np.asarray(image.dataobj).copy()
    empty = [d for d in range(data.shape[-1]) if not data[..., d].any()]
    data[1:3, 1:3, empty[0]] = 2
    nib.save(nib.Nifti1Image(data, image.affine, image.header), label_path)


@pytest.fixture
def lits_copy(lits, tmp_path):
    """A private copy of the LiTS phantoms (modification times kept, as ``cp -p`` would)."""
    root = tmp_path / "lits"
    shutil.copytree(lits[0], root)
    return root, str(root / "datalist.json")


def test_summaries_of_an_edited_label_are_refused_naming_it_and_the_command(lits_copy):
    root, path = lits_copy
    assert len(load_checked_section(path, "training", root, summaries=True)) == 2
    label_path = os.path.join(root, read_datalist(path)["training"][0]["label"])
    _redraw_label(label_path)
    load_checked_section(path, "training", root)  # the values are fine: who does not read the summaries goes on
    with pytest.raises(InputError) as info:
        load_checked_section(path, "training", root, summaries=True)
    assert info.value.path == label_path
    assert f"changed since {path} summarised it (training[0]" in str(info.value)
    command = (f"python scripts/prepare_datalist.py --dataset lits --root {root} --out {path} --val-fraction 0.25 "
               "--test-fraction 0.25 --seed 0")
    assert str(info.value).endswith(command) and "\n" not in error_line(info.value)
    # the command it gives writes a datalist the check accepts, with the same split
    before = {s: [e["case_id"] for e in read_datalist(path)[s]] for s in ("training", "validation", "testing")}
    write_datalist(build_datalist("lits", root, 0.25, 0.25, seed=0, progress=False), path)
    assert {s: [e["case_id"] for e in read_datalist(path)[s]] for s in before} == before
    assert len(load_checked_section(path, "training", root, summaries=True)) == 2


def test_a_touched_label_with_the_same_bytes_is_accepted(lits_copy, monkeypatch):
    root, path = lits_copy
    label_path = os.path.join(root, read_datalist(path)["training"][0]["label"])
    os.utime(label_path, ns=(0, 10**18))  # a copy without -p, a touch: another time, the same bytes
    assert len(load_checked_section(path, "training", root, summaries=True)) == 2
    import bundle.data.summaries as summaries

    # unchanged size and time: no file is hashed
    monkeypatch.setattr(summaries, "path_sha256", lambda p: pytest.fail(f"{p} was hashed"))
    load_checked_section(path, "validation", root, summaries=True)


def test_summaries_without_a_record_are_refused_with_the_command(lits_copy):
    root, path = lits_copy
    datalist = read_datalist(path)
    for entry in datalist["training"]:
        del entry["summarised"]  # a datalist written before the record existed
    Path(path).write_text(json.dumps(datalist))
    load_checked_section(path, "training", root)
    with pytest.raises(InputError) as info:
        load_checked_section(path, "training", root, summaries=True)
    assert info.value.path == path and "training[0]" in str(info.value) and "older version" in str(info.value)
    assert "scripts/prepare_datalist.py --dataset lits" in str(info.value)
