"""The Medical Segmentation Decathlon layout, for any MSD task (``dataset.json`` + ``imagesTr`` / ``labelsTr``).

The generic ``msd`` dataset reads its labels and channels from each task's own ``dataset.json`` (MSD or nnU-Net v2
form); a dataset module of one MSD task (``msd_spleen``) scans with :func:`scan_msd` and its own spec instead, so that
it gets presets, tasks and defaults of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from bundle.data.dataset_spec import DatasetSpec
from bundle.data.dataset_module import DatasetModule
from bundle.data.layout_scan import DatasetLayoutError, DatasetScan, case_stem, folder_niftis

LAYOUTS = {"msd": "dataset.json + imagesTr/<case>.nii.gz + labelsTr/<case>.nii.gz"}


def _read_json(dataset_json: str | os.PathLike | Mapping) -> tuple[dict, str]:
    if isinstance(dataset_json, Mapping):
        return dict(dataset_json), "dataset.json"
    path = os.fspath(dataset_json)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), path
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the MSD dataset description ({err}).") from err


def msd_spec(dataset_json: str | os.PathLike | Mapping) -> DatasetSpec:
    """Build the spec of a Medical Segmentation Decathlon task from its ``dataset.json``.

    Accepts the MSD form (``"labels": {"0": "background", "1": "liver"}``, ``"modality": {"0": "CT"}``) and the
    nnU-Net v2 form (``"labels": {"background": 0, "liver": 1}``, ``"channel_names": {"0": "CT"}``).

    Raises:
        ValueError: the file cannot be read, or has no usable ``labels`` table; the message names the file.
    """
    info, where = _read_json(dataset_json)
    raw = info.get("labels")
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{where}: no 'labels' table (expected e.g. {{\"0\": \"background\", \"1\": \"liver\"}}).")
    try:
        if all(str(k).strip().lstrip("-").isdigit() for k in raw):
            labels = {int(k): str(v) for k, v in raw.items()}
        else:  # nnU-Net v2: name -> value
            labels = {int(v): str(k) for k, v in raw.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: 'labels' must map integer values to names, got {raw}.") from err
    channels = info.get("modality", info.get("channel_names", {"0": "image"}))
    if isinstance(channels, Mapping):
        modalities = tuple(str(channels[k]) for k in sorted(channels, key=lambda k: int(k)))
    else:
        modalities = (str(channels),)
    name = str(info.get("name", "msd"))
    regions = {labels[v]: (v,) for v in sorted(labels) if v != 0}
    return DatasetSpec(
        name="msd", labels=labels, modalities=modalities, regions=regions, description=f"MSD task {name}"
    )


def scan_msd(root: str, dataset: str = "msd", spec: DatasetSpec | None = None) -> DatasetScan:
    """The cases of an MSD task folder, as its ``dataset.json`` lists them (every file it does not list, or lists
    but lacks, a problem). The labels are ``spec``'s (a dataset module of one MSD task), checked against the
    description's, or the description's own (the generic ``msd``)."""
    json_path = os.path.join(root, "dataset.json")
    if not os.path.isfile(json_path):
        raise DatasetLayoutError(
            f"{root}: no MSD dataset.json found. Layouts looked for: msd: {LAYOUTS['msd']}."
        )
    try:
        with open(json_path, encoding="utf-8") as f:
            info = json.load(f)
        described = msd_spec(info)
    except (OSError, ValueError) as err:
        raise DatasetLayoutError(f"{json_path}: cannot use this MSD dataset description ({err}).") from err
    if spec is not None and dict(described.labels) != dict(spec.labels):
        raise DatasetLayoutError(f"{json_path}: labels {described.labels_json()} are not those of dataset {dataset!r} "
                                 f"({spec.labels_json()}): is this the {spec.description}?")
    scan = DatasetScan(dataset, root, "msd", spec or described)
    entries = info.get("training")
    if not isinstance(entries, list):
        scan.problems.append(f"{json_path}: no 'training' list of image/label pairs")
        entries = []

    def on_disk(rel):
        return os.path.normpath(os.path.join(root, rel))

    listed_images, listed_labels, seen = set(), set(), {}
    for index, entry in enumerate(entries):
        where = f"{json_path} training[{index}]"
        if not isinstance(entry, dict) or "image" not in entry:
            scan.problems.append(f"{where}: entry has no 'image' ({entry!r})")
            continue
        rel_images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        image_paths = [on_disk(p) for p in rel_images]
        label_path = on_disk(entry["label"]) if entry.get("label") else None
        listed_images.update(image_paths)
        if label_path:
            listed_labels.add(label_path)
        case_id = case_stem(image_paths[0])
        if case_id in seen:
            scan.problems.append(f"duplicate case id {case_id}: listed in {seen[case_id]} and {where}")
            continue
        seen[case_id] = where
        missing = [p for p in image_paths if not os.path.isfile(p)]
        if missing:
            scan.problems.append(f"{where}: image file does not exist: {', '.join(missing)}")
        if label_path is None:
            scan.problems.append(f"image without label: {where} ({image_paths[0]}) has no 'label'")
        elif not os.path.isfile(label_path):
            scan.problems.append(f"{where}: label file does not exist: {label_path}")
        if missing or label_path is None or not os.path.isfile(label_path):
            continue
        image = image_paths if isinstance(entry["image"], list) else image_paths[0]
        scan.cases.append({"case_id": case_id, "image": image, "label": label_path})

    # cross-check the folders: files dataset.json does not know about are usually a half-copied task
    folder_images = folder_niftis(os.path.join(root, "imagesTr"))
    folder_labels = folder_niftis(os.path.join(root, "labelsTr"))
    image_stems = {case_stem(p) for p in folder_images}
    for path in folder_images:
        if path not in listed_images:
            scan.problems.append(f"{path}: in imagesTr but not listed in {json_path} 'training'")
    for path in folder_labels:
        if path in listed_labels:
            continue
        if case_stem(path) not in image_stems:
            scan.problems.append(f"label without image: {path} (no imagesTr/{os.path.basename(path)})")
        else:
            scan.problems.append(f"{path}: in labelsTr but not listed in {json_path} 'training'")
    return scan


DATASET = DatasetModule(name="msd", specs=(), layouts=LAYOUTS, scan=scan_msd, order=3)
