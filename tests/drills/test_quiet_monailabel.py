"""The MONAI Label app serves its datastore and nothing else (issue 21, items 11 and 13).

One real server (``.venv-monailabel``, loopback) for the module, serving a tiny LiTS model (fallback priors) from a
studies folder that holds two images, a link ``linked.nii`` to a NIfTI outside the studies folder and a final label
of ``case2`` that is a link to a label file outside it. Beside the studies folder lie that outside NIfTI (a real
volume the model segments when it is uploaded), the outside label and a canary folder.

Each endpoint family gets the traversal ids a client can send: ``../x``, the absolute path of the outside NIfTI and
of ``/etc/passwd``, the outside NIfTI's path relative to the server's working folder (the repository), the same
URL-encoded (the server decodes ``%2F``) and double-encoded, and the linked id. Expected: a 4xx whose text names no
server path and says nothing of what the file is; nothing outside the studies folder read (no SAM priors computed
for it, no bytes of it served) or written (the folder around the studies folder is byte-identical afterwards);
an unknown id is ``image id 'X' is not in the datastore``. Uploads (an infer ``file=``, ``PUT /datastore/image``)
and the datastore's own ids keep working.

Without ``.venv-monailabel`` the module is skipped (failed under CI), like ``tests/apps/test_monailabel_server.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps"))
from monailabel_client import REPO, Server, multipart_body, require_app_env
from workflow_utils import make_phantom_set, train

pytestmark = pytest.mark.timeout(900)


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def _snapshot(base: Path, skip: set[str]) -> dict[str, str]:
    """Every entry under ``base`` but the top-level names in ``skip``: sha256 of files, target of links."""
    found = {}
    for folder, dirs, files in os.walk(base):
        rel = Path(folder).relative_to(base)
        if rel.parts and rel.parts[0] in skip:
            continue
        for name in dirs + files:
            path = Path(folder) / name
            if not rel.parts and name in skip:
                continue
            if path.is_symlink():
                found[str(rel / name)] = "-> " + os.readlink(path)
            elif path.is_file():
                found[str(rel / name)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(rel / name)] = "dir"
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(server, layout)``: the server on the studies folder described in the module docstring."""
    require_app_env()
    base = tmp_path_factory.mktemp("quiet_monailabel")
    data = make_phantom_set("lits", base / "data", cases=4, size=16)
    train(data, base / "work")
    datalist = json.loads(data.datalist.read_text())
    entries = datalist["training"] + datalist["validation"] + datalist["testing"]
    images = [data.root / e["image"] for e in entries]
    labels = [data.root / e["label"] for e in entries]
    ext = _suffix(images[0])

    studies, outside, canary = base / "studies", base / "outside", base / "canary"
    for folder in (studies / "labels" / "final", outside, canary):
        folder.mkdir(parents=True)
    shutil.copy(images[0], studies / f"case{ext}")
    shutil.copy(images[1], studies / f"case2{ext}")
    shutil.copy(images[2], outside / f"outside{ext}")
    shutil.copy(labels[1], outside / f"outside_label{ext}")
    (canary / "keep.txt").write_text("canary\n")
    ct = nib.load(str(images[0]))  # the same anatomy as an MR scan would store it: no Hounsfield air or fat
    mr = np.asarray(ct.dataobj, np.float32)
    nib.save(nib.Nifti1Image(mr - mr.min(), ct.affine), str(studies / f"mr{ext}"))
    (studies / f"linked{ext}").symlink_to(outside / f"outside{ext}")
    (studies / "labels" / "final" / f"case2{ext}").symlink_to(outside / f"outside_label{ext}")

    # MONAI Label keeps sessions under ~/.cache unless told otherwise: here, beside the studies folder
    saved = os.environ.get("MONAI_LABEL_SESSION_PATH")
    os.environ["MONAI_LABEL_SESSION_PATH"] = str(base / "sessions")
    try:
        server = Server(studies, {"seg_model": base / "work" / "models", "zoo_source": "local", "sam2": "false"},
                        base / "server.log")
    finally:
        if saved is None:
            os.environ.pop("MONAI_LABEL_SESSION_PATH")
        else:
            os.environ["MONAI_LABEL_SESSION_PATH"] = saved
    try:
        server.wait_ready(timeout=180)
        yield server, {"base": base, "studies": studies, "outside": outside / f"outside{ext}", "canary": canary,
                       "ext": ext, "label": labels[0], "image": images[3]}
    finally:
        server.stop()


def _around(layout) -> dict[str, str]:
    return _snapshot(layout["base"], {"studies", "server.log", "sessions"})


def _file_body(name: str, data: bytes, field: str = "file") -> tuple[bytes, dict]:
    body, ctype = multipart_body({field: (name, data, "application/octet-stream"),
                                  "params": (None, b"{}", "application/json")})
    return body, {"Content-Type": ctype}


def _no_echo(body: bytes, layout) -> str:
    """The body as text, after checking that it names no server path and says nothing of a file's type."""
    text = body.decode(errors="replace")
    for leak in (str(layout["base"]), str(REPO), "/etc", "not a NIfTI", "NRRD", "DICOM", "root:"):
        assert leak not in text, f"the answer leaks {leak!r}: {text}"
    return text


def _primed_cases(layout) -> set[str]:
    """Case ids with a SAM prior cache entry (the app computes priors for every volume it segments)."""
    return {p.name for p in (layout["studies"] / ".sam_priors" / "cache").glob("*/*") if p.is_dir()}


def test_infer_reads_only_the_datastore(served, counts):
    server, layout = served
    before = _around(layout)
    outside = str(layout["outside"])
    relative = os.path.relpath(outside, REPO)  # the server runs in the repository
    # the datastore's own id works (and builds the model, so that refusals below are not a loading failure)
    status, body = server.answer("POST", "/infer/segmentation?image=case&output=json")
    assert status == 200, body
    assert json.loads(body)["case_id"] == "case"

    paths = {
        "absolute outside NIfTI": outside,
        "absolute /etc/passwd": "/etc/passwd",
        "relative to the server": relative,
        "../x": "../x",
        "URL-encoded absolute": quote(outside, safe=""),
        "URL-encoded relative": quote(relative, safe=""),
    }
    for what, value in paths.items():
        status, body = server.answer("POST", f"/infer/segmentation?image={value}&output=json")
        text = _no_echo(body, layout)
        assert status == 400 and "not a datastore image id" in text, f"{what}: {status} {text}"

    # MONAI Label lets the request's params override the query's image
    body, ctype = multipart_body({"params": (None, json.dumps({"image": outside}).encode(), "application/json")})
    status, answer = server.answer("POST", "/infer/segmentation?image=case&output=json", body, {"Content-Type": ctype})
    assert status == 400 and "not a datastore image id" in _no_echo(answer, layout), answer

    status, body = server.answer("POST", "/infer/segmentation?image=nosuch&output=json")
    assert status == 404 and "image id 'nosuch' is not in the datastore" in _no_echo(body, layout), body
    double = quote(quote(relative, safe=""), safe="")  # arrives as the literal text ..%2F..: an unknown id
    status, body = server.answer("POST", f"/infer/segmentation?image={double}&output=json")
    assert status == 404 and "is not in the datastore" in _no_echo(body, layout), body
    status, body = server.answer("POST", "/infer/segmentation?image=linked&output=json")
    assert status == 403 and "outside the studies folder" in _no_echo(body, layout), body
    status, body = server.answer("POST", "/infer/wsi/segmentation?image=" + quote(outside, safe=""))
    assert 400 <= status < 500, body
    _no_echo(body, layout)

    assert _primed_cases(layout) == {"case"}, "a volume outside the studies folder was segmented"
    # an upload is the way to segment a file that is not in the datastore
    body, headers = _file_body("scan" + layout["ext"], layout["outside"].read_bytes())
    status, answer = server.answer("POST", "/infer/segmentation?output=json", body, headers)
    assert status == 200, answer
    # ... or a session (3D Slicer's way for a volume of its own): the image lives in MONAI Label's session folder
    body, headers = _file_body("scan" + layout["ext"], layout["outside"].read_bytes(), field="files")
    status, answer = server.answer("PUT", "/session/", body, headers)
    assert status == 200, answer
    session_id = json.loads(answer)["session_id"]
    status, answer = server.answer("POST", f"/infer/segmentation?session_id={session_id}&output=json")
    assert status == 200, answer
    assert _around(layout) == before
    counts["quiet"] += 1


def test_datastore_image_endpoints_stay_in_the_studies_folder(served, counts):
    server, layout = served
    before = _around(layout)
    outside_bytes = layout["outside"].read_bytes()
    ext = layout["ext"]

    status, body = server.answer("GET", "/datastore/image?image=linked")
    assert status == 404 and body != outside_bytes, "a linked file outside the studies folder was served"
    assert server.answer("HEAD", "/datastore/image?image=linked")[0] == 404
    status, body = server.answer("GET", "/datastore/image/info?image=linked")
    _no_echo(body, layout)
    for value in (str(layout["outside"]), quote(str(layout["outside"]), safe=""), "../outside/outside"):
        status, body = server.answer("GET", f"/datastore/image?image={value}")
        assert status == 404 and body != outside_bytes

    upload = layout["image"].read_bytes()
    canary = layout["canary"]
    for value in ("../canary/evil", quote("../canary/evil", safe=""), quote(str(canary / "evil"), safe=""), "..",
                  ".hidden"):
        body, headers = _file_body("evil" + ext, upload)
        status, answer = server.answer("PUT", f"/datastore/image?image={value}", body, headers)
        assert status == 400, f"{value}: {status} {answer}"
        _no_echo(answer, layout)
    body, headers = _file_body("evil.json", b"{}")
    status, answer = server.answer("PUT", "/datastore/image?image=datastore_v2", body, headers)
    assert status == 400 and "must end in one of" in answer.decode(), answer
    body, headers = _file_body("evil" + ext, upload)
    status, answer = server.answer("PUT", "/datastore/image?image=linked", body, headers)
    assert status == 403, "an upload was written through a link leading outside the studies folder"
    status, answer = server.answer("DELETE", "/datastore/image?id=linked")
    assert status == 403 and layout["outside"].read_bytes() == outside_bytes, "a file outside was deleted"
    assert _around(layout) == before

    # the way in: an upload with a plain id
    body, headers = _file_body("added" + ext, upload)
    status, answer = server.answer("PUT", "/datastore/image?image=added", body, headers)
    assert status == 200 and json.loads(answer) == {"image": "added"}, answer
    assert (layout["studies"] / f"added{ext}").read_bytes() == upload
    counts["quiet"] += 1


def test_label_endpoints_stay_in_the_studies_folder(served, counts):
    server, layout = served
    before = _around(layout)
    ext = layout["ext"]
    label = layout["label"].read_bytes()
    outside_label = (layout["outside"].parent / f"outside_label{ext}").read_bytes()

    for tag in ("../../canary", quote("../../canary", safe=""), quote(str(layout["canary"]), safe=""), ".."):
        body, headers = _file_body("label" + ext, label, field="label")
        status, answer = server.answer("PUT", f"/datastore/label?image=case&tag={tag}", body, headers)
        assert status == 400, f"tag {tag}: {status} {answer}"
        _no_echo(answer, layout)
    for image in ("../x", quote(str(layout["outside"]), safe="")):
        body, headers = _file_body("label" + ext, label, field="label")
        status, answer = server.answer("PUT", f"/datastore/label?image={image}&tag=final", body, headers)
        assert status == 400, f"image {image}: {status} {answer}"
        _no_echo(answer, layout)
    body, headers = _file_body("label" + ext, label, field="label")
    status, answer = server.answer("PUT", "/datastore/label?image=nosuch&tag=final", body, headers)
    assert status == 404 and "image id 'nosuch' is not in the datastore" in answer.decode(), answer

    # case2's final label is a link to a file outside: not served, not written through, not deleted
    status, body = server.answer("GET", "/datastore/label?label=case2&tag=final")
    assert status == 404 and body != outside_label, "a linked label outside the studies folder was served"
    body, headers = _file_body("label" + ext, label, field="label")
    status, answer = server.answer("PUT", "/datastore/label?image=case2&tag=final", body, headers)
    assert status == 403, "a label was written through a link leading outside the studies folder"
    status, answer = server.answer("DELETE", "/datastore/label?id=case2&tag=final")
    assert status == 403, "a linked label outside the studies folder was deleted"

    # an infer request that saves its label under a traversal tag
    params = json.dumps({"save_label": True, "label_tag": "../../canary"}).encode()
    body, ctype = multipart_body({"params": (None, params, "application/json")})
    status, answer = server.answer("POST", "/infer/segmentation?image=case&output=json", body,
                                   {"Content-Type": ctype})
    assert status == 400, f"{status} {answer}"
    assert _around(layout) == before

    body, headers = _file_body("label" + ext, label, field="label")
    status, answer = server.answer("PUT", "/datastore/label?image=case&tag=final", body, headers)
    assert status == 200 and json.loads(answer) == {"image": "case", "label": "case"}, answer
    assert (layout["studies"] / "labels" / "final" / f"case{ext}").read_bytes() == label
    counts["quiet"] += 1


def test_infer_refuses_another_modality(served, counts):
    """The served model is a CT (LiTS) model: an MR-like image is refused with its reason unless the request allows
    it, as batch inference does (it ran quietly before)."""
    server, layout = served
    status, body = server.answer("POST", "/infer/segmentation?image=mr&output=json")
    text = _no_echo(body, layout)
    assert status == 422 and "image id 'mr': intensities look like MR, not CT" in text, f"{status} {text}"
    assert "allow_modality_mismatch" in text
    body, ctype = multipart_body({"params": (None, json.dumps({"allow_modality_mismatch": True}).encode(),
                                             "application/json")})
    status, answer = server.answer("POST", "/infer/segmentation?image=mr&output=json", body, {"Content-Type": ctype})
    assert status == 200, answer
    counts["quiet"] += 1
