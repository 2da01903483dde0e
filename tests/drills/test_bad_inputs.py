"""Bad-input matrix: each kind of broken input, through every stage that reads it, is refused with one clear line.

Stages: datalist preparation (``sam-priors-datalist``), prior precompute (``run precompute``), training
(``run training``) and batch inference (``sam-priors-infer``). Each case damages one file (or datalist entry) of a
private copy of the phantom set and runs the real command (:mod:`forkserver`): it must exit non-zero and end with ONE
line that names the file at fault and the problem, never with a traceback line: ``ERROR: <file>: <problem>``, or for
batch inference, whose other inputs would still run, ``FAILED: <input>: <reason>`` with exit status 1 (a model it
cannot use: ``ERROR:``, exit status 2). Training and batch inference must also have written nothing (no
``model.pt``, no prediction). Kinds that a stage does not read (checkpoints for datalist preparation, voxel values
for its header scan) are not in the matrix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from drill_utils import copy_set, precompute_argv, training_argv

#: a modality of the target case: the datalist lists FLAIR, T1, T1ce, T2 in this order
T1 = 1


def _entry(data, section):
    return json.loads(data.datalist.read_text())[section][0]


def _rewrite_datalist(data, section, change):
    datalist = json.loads(data.datalist.read_text())
    change(datalist[section][0])
    data.datalist.write_text(json.dumps(datalist, indent=1))


def _image(data, section) -> Path:
    return data.root / _entry(data, section)["image"][T1]


def _label(data, section) -> Path:
    return data.root / _entry(data, section)["label"]


def _resave(path: Path, change) -> Path:
    image = nib.load(str(path))
    array, affine = np.asarray(image.dataobj, dtype=np.float32), image.affine.copy()
    array, affine = change(array, affine)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _set(index, value):
    def change(array, affine):
        array[index] = value
        return array, affine
    return change


def truncated(data, section):
    path = _image(data, section)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return path, "truncated"


def zero_bytes(data, section):
    path = _image(data, section)
    path.write_bytes(b"")
    return path, "empty"


def not_nifti(data, section):
    path = _image(data, section)
    path.write_bytes(b"<html>this is a web page saved under a NIfTI name</html>\n" * 20)
    return path, "not a"


def shape_mismatch(data, section):
    return _resave(_label(data, section), lambda a, aff: (a[:, :, 1:], aff)), "shape"


def affine_mismatch(data, section):
    def shift(array, affine):
        affine[0, 3] += 4.0
        return array, affine
    return _resave(_label(data, section), shift), "affine"


def nan(data, section):
    return _resave(_image(data, section), _set((10, 10, 3), np.nan)), "NaN"


def inf(data, section):
    return _resave(_image(data, section), _set((10, 10, 3), np.inf)), "inf"


def image_2d(data, section):
    return _resave(_image(data, section), lambda a, aff: (a[:, :, a.shape[2] // 2], aff)), "2D"


def image_4d(data, section):
    return _resave(_image(data, section), lambda a, aff: (np.stack([a, a], -1), aff)), "4D"


def label_values(data, section):
    return _resave(_label(data, section), _set((10, 10, 3), 7)), "label values [7]"


def missing_modality(data, section):
    path = _image(data, section)
    path.unlink()
    return path, "does not exist"


def missing_label(data, section):
    path = _label(data, section)
    path.unlink()
    return path, "does not exist"


def datalist_missing_key(data, section):
    _rewrite_datalist(data, section, lambda e: e.pop("image"))
    return data.datalist, "missing key 'image'"


def datalist_wrong_path(data, section):
    _rewrite_datalist(data, section, lambda e: e["image"].__setitem__(T1, "elsewhere/t1.nii.gz"))
    return data.root / "elsewhere" / "t1.nii.gz", "does not exist"


def case_id_dotdot(data, section):
    _rewrite_datalist(data, section, lambda e: e.__setitem__("case_id", "../escaped"))
    return data.datalist, "case id '../escaped'"


def case_id_space(data, section):
    _rewrite_datalist(data, section, lambda e: e.__setitem__("case_id", "case 1"))
    return data.datalist, "case id 'case 1'"


def spaced_case_files(data, section):
    """The datalist tool names cases after their files: a case folder and files with a space in the name."""
    folder = _image(data, section).parent
    spaced = folder.with_name(folder.name.replace("_", " "))
    for path in folder.iterdir():
        path.rename(folder / path.name.replace(folder.name, spaced.name))
    folder.rename(spaced)
    return spaced / f"{spaced.name}_flair.nii.gz", f"case id '{spaced.name}' holds white space"


def _first_layer(state) -> str:
    """``model.0``: the module of the network's first weight (the one that reads the input channels)."""
    first = next(k for k, v in state.items() if v.ndim >= 3)
    return ".".join(first.split(".")[:2])


def wrong_architecture(model: Path):
    torch.save(torch.nn.Linear(12, 3).state_dict(), model)  # weights of another network entirely
    return model, "network_def"


def wrong_channels(model: Path):
    """The same network trained on one more input channel (e.g. with another prior kind)."""
    state = torch.load(model, map_location="cpu", weights_only=True)
    layer = _first_layer(state)
    channels = state[next(k for k, v in state.items() if k.startswith(layer) and v.ndim >= 3)].shape[1]
    for key, value in state.items():
        if key.startswith(layer) and value.ndim >= 3 and value.shape[1] == channels:
            state[key] = torch.cat([value, value[:, :1]], 1)
    torch.save(state, model)
    return model, f"{channels + 1} input channels"


def truncated_checkpoint(model: Path):
    model.write_bytes(model.read_bytes()[:4000])
    return model, "truncated"


IMAGE_KINDS = {f.__name__: f for f in (truncated, zero_bytes, not_nifti, nan, inf, image_4d)}
PAIR_KINDS = {f.__name__: f for f in (shape_mismatch, affine_mismatch, label_values, missing_modality, missing_label)}
DATALIST_KINDS = {f.__name__: f for f in (datalist_missing_key, datalist_wrong_path, case_id_dotdot, case_id_space)}
CHECKPOINT_KINDS = {f.__name__: f for f in (wrong_architecture, wrong_channels, truncated_checkpoint)}

MATRIX = (
    [("datalist", k) for k in [*IMAGE_KINDS, *PAIR_KINDS, "case_id_space"] if k not in ("nan", "inf")]
    + [("precompute", k) for k in [*IMAGE_KINDS, *PAIR_KINDS, *DATALIST_KINDS]]
    + [("training", k) for k in [*IMAGE_KINDS, "image_2d", *PAIR_KINDS, *DATALIST_KINDS, *CHECKPOINT_KINDS]]
    + [("inference", k) for k in [*IMAGE_KINDS, *DATALIST_KINDS, *CHECKPOINT_KINDS]]
)
KINDS = {**IMAGE_KINDS, "image_2d": image_2d, **PAIR_KINDS, **DATALIST_KINDS}
SECTION = {"datalist": "testing", "precompute": "testing", "training": "validation", "inference": "testing"}


def _damage_checkpoint(stage, kind, trained, work, model_dir):
    """Training reads the resume checkpoint (its ``network`` entry damaged), inference the model folder's weights."""
    if stage == "inference":
        return CHECKPOINT_KINDS[kind](model_dir / "model.pt")
    (work / "run").mkdir(parents=True)
    target = work / "run" / "checkpoint_last.pt"
    shutil.copy(trained / "run" / "checkpoint_last.pt", target)
    if kind == "truncated_checkpoint":
        return truncated_checkpoint(target)
    checkpoint = torch.load(target, map_location="cpu", weights_only=True)
    # the run's recorded settings must match this command's (its own ckpt_dir), or the resume is refused for them
    # before the damaged network is read
    checkpoint["info"]["run_settings"]["ckpt_dir"] = str(work / "models")
    torch.save(checkpoint["network"], work / "network.pt")
    _, problem = CHECKPOINT_KINDS[kind](work / "network.pt")
    checkpoint["network"] = torch.load(work / "network.pt", map_location="cpu", weights_only=True)
    torch.save(checkpoint, target)
    return target, problem


def _argv(stage, data, work, model_dir, kind=None):
    if stage == "datalist":
        return ["sam-priors-datalist", "--dataset", "brats", "--root", str(data.root), "--out",
                str(work / "datalist.json"), "--no-progress"]
    if stage == "precompute":
        return precompute_argv(data.root, data.datalist, work / "cache")
    if stage == "training":
        # a damaged resume checkpoint is read when the run goes on: one more epoch than the finished run had
        return training_argv(data.root, data.datalist, work, **({"max_epochs": 2} if kind in CHECKPOINT_KINDS else {}))
    return ["sam-priors-infer", "--input", str(data.datalist), "--output", str(work / "out"), "--model", str(model_dir),
            "--prior_cache", str(work / "cache")]


#: the datalist tool's layout scan names the file it expected (``x.nii[.gz]``) and what it is
DATALIST_PROBLEM = {"missing_modality": "missing modality t1", "missing_label": "has no segmentation"}
#: phrases of the batch-inference report where its wording differs from the other stages'
INFERENCE_PROBLEM = {"nan": "NaN or infinite", "inf": "NaN or infinite", "datalist_missing_key": "has no image path"}


@pytest.mark.parametrize("stage, kind", MATRIX, ids=[f"{s}-{k}" for s, k in MATRIX])
def test_bad_input_is_refused_with_one_clear_line(stage, kind, pristine, trained, commands, counts, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    work, model_dir = tmp_path / "work", tmp_path / "model"
    shutil.copytree(trained / "models", model_dir)
    if kind in CHECKPOINT_KINDS:
        path, problem = _damage_checkpoint(stage, kind, trained, work, model_dir)
    elif stage == "datalist" and kind == "case_id_space":
        path, problem = spaced_case_files(data, SECTION[stage])
    else:
        path, problem = KINDS[kind](data, SECTION[stage])
    if stage == "inference":
        problem = INFERENCE_PROBLEM.get(kind, problem)
    if stage == "datalist" and kind in DATALIST_PROBLEM:
        path, problem = f"{str(path).removesuffix('.gz')}[.gz]", DATALIST_PROBLEM[kind]
    result = commands.run(_argv(stage, data, work, model_dir, kind), tmp_path / "log")
    line = result.last_line
    # batch inference reports a failed input as "FAILED: <input>: <reason>" and exits 1; a model it cannot use, or
    # any other command's fault, is one "ERROR: <file>: <problem>" line
    prefix = "FAILED: " if stage == "inference" and kind not in CHECKPOINT_KINDS else "ERROR: "
    expected_rc = {"FAILED: ": 1, "ERROR: ": 2 if stage in ("datalist", "inference") else 1}[prefix]
    assert (result.rc, line[: len(prefix)]) == (expected_rc, prefix), result.stderr[-3000:]
    assert str(path) in line and problem.lower() in line.lower(), line
    assert sum(text.startswith(("ERROR: ", "FAILED: ")) for text in result.stderr.splitlines()) == 1, result.stderr
    assert not (work / "models" / "model.pt").exists()  # training stopped before its first epoch
    assert not list((work / "out").glob("*.nii.gz"))  # no prediction written
    counts["refused"] += 1
