"""The MONAI Label app (apps/monailabel) against a real server of its own environment (.venv-monailabel).

One test walks the path a radiologist's client takes: a tiny SAMAug model trained here with LiteMedSAM priors and a
SAMAug-C classifier are served from a studies folder of phantom CT volumes; ``/info/`` lists the tasks; the
segmentation comes back in the image's shape and affine, its SAM priors computed in the first request and read from
the cache in the second (and as NRRD, the format OHIF asks for); the classifier answers with probabilities; a label saved through ``PUT /datastore/label``
trains the model again (``POST /train/segmentation``) and the new weights are served.

Phantoms are 16 x 16 in-plane (8-10 slices): LiteMedSAM's encoder runs at 256 x 256 whatever the slice size, so the
slice count sets the time (about 3 s per slice on two busy cores).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("workflows", "workflows/classification"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from monailabel_client import Server, group_alive, multipart_body, multipart_fields, require_app_env
from workflow_utils import make_phantom_set, train

LITEMEDSAM_FAST = {"priors#box_grid#box_stride": 1.0, "priors#box_grid#refine_rounds": 0}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _infer_segmentation(server: Server, image_id: str, out: Path) -> tuple[dict, nib.Nifti1Image, float]:
    start = time.monotonic()
    body, ctype = server.request("POST", f"/infer/segmentation?image={image_id}")
    seconds = time.monotonic() - start
    fields = multipart_fields(body, ctype)
    out.write_bytes(fields["image"])
    return json.loads(fields["params"]), nib.load(out), seconds


@pytest.mark.timeout(900)
def test_monailabel_server_infer_cache_save_train(tmp_path, record_property):
    require_app_env()
    from cls_utils import train_cls

    # (a) models trained with the bundle's environment
    data = make_phantom_set("lits", tmp_path / "data", cases=4, size=16)
    train(data, tmp_path / "seg", **{"priors#sam_model_type": "lite_medsam"}, **LITEMEDSAM_FAST)
    train_cls(data, tmp_path / "cls", task="lits_tumour_volume")
    seg_model, cls_model = tmp_path / "seg" / "models", tmp_path / "cls" / "models"

    # (b) a studies folder with the testing case (never seen by training, so its priors are not cached anywhere)
    (entry,) = json.loads(data.datalist.read_text())["testing"]
    studies = tmp_path / "studies"
    studies.mkdir()
    image_path = studies / Path(entry["image"]).name
    shutil.copy(data.root / entry["image"], image_path)
    image_id = image_path.name.removesuffix(".nii")
    image = nib.load(image_path)

    # (c) the server, from the app's environment, offline
    server = Server(studies, {"seg_model": seg_model, "cls_model": cls_model, "zoo_source": "local", "sam2": "false"},
                    tmp_path / "server.log")
    try:
        start_seconds = server.wait_ready(timeout=180)

        # (d) info, segmentation twice (priors computed, then cached), classification
        info = server.get("/info/")
        assert set(info["models"]) == {"segmentation", "classification"}
        assert set(info["trainers"]) == {"segmentation"}
        assert info["models"]["segmentation"]["labels"] == {"liver": 1, "tumour": 2}
        assert info["models"]["classification"]["labels"] == ["no_tumour", "tumour"]
        assert info["datastore"]["total"] == 1

        first, label1, first_seconds = _infer_segmentation(server, image_id, tmp_path / "first.nii.gz")
        assert first["sam_priors"] == "computed" and first["case_id"] == image_id
        assert label1.shape == image.shape and label1.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(label1.affine, image.affine)
        assert set(np.unique(np.asarray(label1.dataobj)).tolist()) <= {0, 1, 2}
        (entry_file,) = (studies / ".sam_priors" / "cache").glob(f"lite_medsam-*/{image_id}/entry.json")
        entry_mtime = entry_file.stat().st_mtime_ns

        second, label2, second_seconds = _infer_segmentation(server, image_id, tmp_path / "second.nii.gz")
        assert second["sam_priors"] == "read from cache"
        assert entry_file.stat().st_mtime_ns == entry_mtime  # the cache entry was read, not rewritten
        assert second_seconds < first_seconds
        np.testing.assert_array_equal(np.asarray(label2.dataobj), np.asarray(label1.dataobj))
        np.testing.assert_array_equal(label2.affine, image.affine)

        # OHIF asks for NRRD (MONAI Label's own writer): same voxels, same grid
        body, ctype = multipart_body({"params": (None, b'{"result_extension": ".nrrd"}', "application/json")})
        nrrd = tmp_path / "label.nrrd"
        nrrd.write_bytes(server.request("POST", f"/infer/segmentation?image={image_id}&output=image", body,
                                        {"Content-Type": ctype})[0])
        from_nrrd = LoadImage(reader="ITKReader", image_only=True)(str(nrrd))
        np.testing.assert_array_equal(np.asarray(from_nrrd), np.asarray(label1.dataobj))
        np.testing.assert_allclose(np.asarray(from_nrrd.affine), image.affine, atol=1e-5)

        probabilities = server.post_json(f"/infer/classification?image={image_id}")
        assert probabilities["class_names"] == ["no_tumour", "tumour"] and probabilities["level"] == "volume"
        (row,) = probabilities["rows"]
        assert abs(row["no_tumour"] + row["tumour"] - 1.0) < 1e-4
        assert probabilities["predicted"][0] in ("no_tumour", "tumour")

        # (e) a final label through the datastore API
        label_bytes = (data.root / entry["label"]).read_bytes()
        body, ctype = multipart_body({"label": ("label.nii", label_bytes, "application/octet-stream"),
                                      "params": (None, b"{}", "application/json")})
        saved = json.loads(server.request("PUT", f"/datastore/label?image={image_id}&tag=final", body,
                                          {"Content-Type": ctype})[0])
        assert saved == {"image": image_id, "label": image_id}
        assert server.get("/info/")["datastore"]["completed"] == 1

        # (f) training on it, one epoch; the served model is replaced and served
        weights = seg_model / "model.pt"
        before = _sha(weights)
        train_start = time.monotonic()
        task = server.post_json("/train/segmentation", {"max_epochs": 1})
        assert task["status"] in ("SUBMITTED", "RUNNING")
        status = task
        while time.monotonic() - train_start < 300:
            status = server.get("/train/")
            if status["status"] in ("DONE", "ERROR", "STOPPED"):
                break
            time.sleep(1)
        train_seconds = time.monotonic() - train_start
        assert status["status"] == "DONE", f"training ended {status['status']}:\n" + "\n".join(status.get("details", []))
        assert _sha(weights) != before
        stats = server.get("/info/")["train_stats"]["segmentation"]
        assert stats["epoch"] == 1 and stats["train_images"] == 1 and stats["model"] == str(weights)

        after, label3, _ = _infer_segmentation(server, image_id, tmp_path / "after.nii.gz")
        assert after["sam_priors"] == "read from cache"
        assert label3.shape == image.shape
    finally:
        server.stop()
    # (g) no process of the server's group is left
    assert not group_alive(server.process.pid)

    numbers = {"server_start_s": round(start_seconds, 1), "first_infer_s": round(first_seconds, 2),
               "second_infer_s": round(second_seconds, 2), "train_1_epoch_s": round(train_seconds, 1)}
    for name, value in numbers.items():
        record_property(name, value)
    print("MONAI Label server timings:", numbers)
