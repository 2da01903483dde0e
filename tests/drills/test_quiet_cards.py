"""Drill: a model folder is data, never code, and a model refuses what it was not trained on.

Real model folders of every card kind are written by tiny trainings on LiTS phantoms (SAMAug segmentation, SAMAug-C,
SAM-Mix, WeakMedSAM's classifier). Into EACH field of EACH card a ``$`` expression that would create a marker file,
an ``@`` reference and a foreign ``_target_`` are planted in turn (the card's own digest recomputed, so that only the
value is at fault); the reader that batch inference, evaluation or the pipeline uses must refuse the card naming the
file and the field, and the marker must never appear. Then: a card edited after training (``branches`` -> ``raw``,
another task), weights that are not the card's (a kill between the two writes), a card without binding, an MR scan
for a CT model (refused, and run with ``allow_modality_mismatch``, which is recorded), and ``load_sam()``'s default.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import pydicom
import pytest
import torch

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("workflows", "workflows/classification", "workflows/semisup", "workflows/weak"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from workflow_utils import make_phantom_set, train  # noqa: E402

from bundle.errors import InputError  # noqa: E402
from bundle.workflows.common.model_card import CARD_NAME, card_digest  # noqa: E402

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def lits(tmp_path_factory):
    return make_phantom_set("lits", tmp_path_factory.mktemp("cards_lits"))


@pytest.fixture(scope="module")
def folders(lits, tiny_sam_checkpoint, tmp_path_factory):
    """kind -> (the file holding the card, how to read it the way the bundle does)."""
    from cls_utils import train_cls
    from semisup_utils import run_mix
    from weak_utils import run_weak

    from bundle.inference.models import load_model
    from bundle.workflows.semisup.predictor import read_card as read_mix_model
    from bundle.workflows.weak.classifier import load_classifier

    seg, cls, mix, weak = (tmp_path_factory.mktemp(k) for k in ("seg", "cls", "mix", "weak"))
    train(lits, seg)
    train_cls(lits, cls, task="lits_tumour")
    run_mix(lits, mix, tiny_sam_checkpoint)
    for stage in ("sam_features", "subclasses", "classifier"):
        run_weak(lits, weak, stage, **{"priors#sam_checkpoint": str(tiny_sam_checkpoint)})
    return {
        "segmentation": (seg / "models" / CARD_NAME, lambda f: load_model(f.parent)),
        "classification": (cls / "models" / CARD_NAME, lambda f: load_model(f.parent)),
        "sam_mix": (mix / "models" / CARD_NAME, lambda f: load_model(f.parent)),
        "sam_mix_stored": (mix / "models" / "model.pt", lambda f: read_mix_model(f.parent)),
        "weak_classifier": (weak / "models" / "classifier.pt", load_classifier),
    }


def _leaves(value, path=()):
    """Every field of a card: its leaves, the first item of each list, and each object itself."""
    if isinstance(value, dict):
        if path:
            yield path
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        yield from _leaves(value[0], (*path, 0))
    else:
        yield path


def _dotted(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _planted(card, path, payload):
    card = json.loads(json.dumps(card))
    holder = card
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = payload
    return card


class _Card:
    """Read and write the card of one kind (a JSON file, or the ``card`` entry of a checkpoint)."""

    def __init__(self, file: Path) -> None:
        self.file, self.json = file, file.suffix == ".json"
        self.original = file.read_bytes()
        if self.json:
            self.card = json.loads(self.original)
        else:
            self.stored = torch.load(file, weights_only=True)
            self.card = self.stored["card"]

    def write(self, card, rebind: bool = True) -> None:
        if self.json:
            self.file.write_text(json.dumps({**card, "card_sha256": card_digest(card)} if rebind else card))
        else:
            torch.save({**self.stored, "card": card}, self.file)

    def restore(self) -> None:
        self.file.write_bytes(self.original)


PAYLOADS = {
    "expression": lambda marker: f"$__import__('pathlib').Path({str(marker)!r}).touch() or 1.0",
    "reference": lambda marker: "@network_def",
    "target": lambda marker: {"_target_": "subprocess.call", "args": ["touch", str(marker)]},
}


@pytest.mark.parametrize("kind", ["segmentation", "classification", "sam_mix", "sam_mix_stored", "weak_classifier"])
def test_no_card_field_runs_code(folders, kind, tmp_path, counts):
    file, read = folders[kind]
    card = _Card(file)
    read(file)  # the untouched card is read
    fields = [p for p in _leaves(card.card) if p]
    assert len(fields) > 10, fields
    marker = tmp_path / "marker"
    shown = set()
    try:
        for path in fields:
            for name, payload in PAYLOADS.items():
                card.write(_planted(card.card, path, payload(marker)), rebind=path != ("card_sha256",))
                with pytest.raises(InputError) as refused:
                    read(file)
                assert not marker.exists(), f"{kind} {_dotted(path)}: the card ran code"
                message = str(refused.value)
                assert message.startswith(f"{file}: ") and f"field {_dotted(path)}" in message, (name, message)
                shown.add(name)
    finally:
        card.restore()
    read(file)
    assert shown == set(PAYLOADS)
    counts["quiet"] += len(shown)


def test_card_edited_after_training_is_refused_naming_both_files(folders, counts):
    from bundle.inference.models import load_model

    for kind, field, value in (("classification", ("network", "branches"), "raw"),
                               ("classification", ("task",), "lits_liver"),
                               ("segmentation", ("config", "prior_mode"), "none")):
        file, _ = folders[kind]
        original = file.read_bytes()
        card = _planted(json.loads(original), field, value)
        file.write_text(json.dumps(card))  # edited by hand: its card_sha256 is the one of training
        try:
            with pytest.raises(InputError, match="edited after training") as refused:
                load_model(file.parent)
            assert str(file) in str(refused.value) and str(file.parent / "model.pt") in str(refused.value)
        finally:
            file.write_bytes(original)
        counts["quiet"] += 1


def test_weights_that_are_not_the_cards_are_refused(folders, counts):
    """A kill between writing model.pt and model_card.json leaves new weights with the old card."""
    from bundle.inference.models import load_model

    file, _ = folders["segmentation"]
    weights = file.parent / "model.pt"
    original = weights.read_bytes()
    state = torch.load(weights, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.01  # the next best model of the same run
    torch.save(state, weights)
    try:
        with pytest.raises(InputError, match="is not the model the card") as refused:
            load_model(file.parent)
        assert str(weights) in str(refused.value) and str(file) in str(refused.value)
    finally:
        weights.write_bytes(original)
    load_model(file.parent)
    counts["quiet"] += 1


def test_sam_mix_adapter_of_another_write_is_refused(folders, counts):
    """SAM-Mix writes adapter.pt, then model.pt (which records the adapter's sha256), then the card."""
    from bundle.inference.models import load_model

    file, _ = folders["sam_mix"]
    adapter = file.parent / "adapter.pt"
    original = adapter.read_bytes()
    stored = torch.load(adapter, weights_only=True)
    tensors = stored["state"]
    name = next(k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point())
    tensors[name] = tensors[name] + 0.01  # the adapter of a later training, killed before its model.pt
    torch.save(stored, adapter)
    try:
        with pytest.raises(InputError, match="is not the adapter") as refused:
            load_model(file.parent)
        assert str(refused.value).startswith(str(adapter)) and str(file.parent / "model.pt") in str(refused.value)
    finally:
        adapter.write_bytes(original)
    load_model(file.parent)
    counts["quiet"] += 1


def test_card_without_binding_is_refused_and_can_be_bound(folders, tmp_path, counts):
    from bundle.inference.models import load_model
    from bundle.workflows.common.model_card import main as model_card_main

    file, _ = folders["segmentation"]
    folder = tmp_path / "shared_model"
    shutil.copytree(file.parent, folder)
    card = json.loads((folder / CARD_NAME).read_text())
    old = {k: v for k, v in card.items() if k not in ("weights_sha256", "card_sha256", "modality")}
    old["card_version"] = 1
    old["network"] = {"_target_": "UNet", **{k: v for k, v in old["network"].items() if k != "name"}}
    (folder / CARD_NAME).write_text(json.dumps(old))
    with pytest.raises(InputError, match="model_card bind") as refused:
        load_model(folder)
    assert str(refused.value).startswith(str(folder / CARD_NAME))
    assert model_card_main(["bind", str(folder)]) == 0
    assert load_model(folder).modality == "CT"
    counts["quiet"] += 1


def _mr_dicom(folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    return folder


def test_mr_scans_for_a_ct_model_are_refused_unless_allowed(folders, tmp_path, counts):
    from bundle.inference.batch import run_batch

    model_dir = folders["segmentation"][0].parent
    mr_dicom = _mr_dicom(tmp_path / "mr_series")
    brain = tmp_path / "brain.nii.gz"  # an MR volume as NIfTI: no DICOM header, only its intensities say MR
    nib.save(nib.load(NIBABEL_DATA / "anatomical.nii"), brain)
    cache = str(tmp_path / "cache")
    refused = run_batch([mr_dicom, brain], tmp_path / "refused", model_dir, prior_cache_dir=cache)
    reasons = {r.kind: r.reason for r in refused.records}
    assert refused.exit_code == 1 and refused.counts["done"] == 0, refused.records
    assert "DICOM Modality is MR" in reasons["dicom"] and "trained on CT" in reasons["dicom"]
    assert "look like MR" in reasons["image"]
    assert not list((tmp_path / "refused").rglob("*.nii.gz"))
    allowed = run_batch([mr_dicom, brain], tmp_path / "allowed", model_dir, prior_cache_dir=cache,
                        allow_modality_mismatch=True)
    assert allowed.exit_code == 0 and allowed.counts["done"] == 2, allowed.records
    summary = json.loads(allowed.summary_path.read_text())
    assert all("trained on CT" in r["modality_mismatch"] for r in summary["records"])
    counts["quiet"] += 2


def test_ct_intensities_for_an_mr_model_are_refused(counts):
    from bundle.inference.modality import modality_of, modality_problem

    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    assert "look like CT" in modality_problem("MR", hu)
    assert "DICOM Modality is CT" in modality_problem("MR", None, "CT")
    mr = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm")).pixel_array
    assert modality_problem("MR", mr) is None and modality_problem("CT", hu, "CT") is None
    assert modality_of("brats", ["FLAIR", "T1", "T1ce", "T2"]) == "MR" and modality_of("msd", ["MRI"]) == "MR"
    assert modality_of("msd", ["CT"]) == "CT" and modality_of(None, ["PET"]) == "other"
    counts["quiet"] += 1


def test_load_sam_default_is_lite_medsam_and_random_weights_are_refused(counts):
    from bundle.sam.loading import load_sam

    model = load_sam()
    assert model.sam_info.model_type == "lite_medsam" and model.sam_info.checkpoint_sha256
    with pytest.raises(FileNotFoundError, match="random_weights=True"):
        load_sam("tiny")
    assert load_sam("tiny", random_weights=True).sam_info.checkpoint_sha256 is None
    counts["quiet"] += 1
