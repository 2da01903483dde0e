"""Bundle metadata, the offline metadata schema, the large-file list and the logging config.

Everything here runs offline: ``verify_metadata`` skips the schema download because ``--filepath`` exists, and no
test needs the SAM checkpoints to be present.
"""

import configparser
import copy
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml
from monai.apps.utils import SUPPORTED_HASH_TYPES
from monai.bundle import download_large_files, verify_metadata

ROOT = Path(__file__).resolve().parents[2]
META_FILE = ROOT / "configs" / "metadata.json"
SCHEMA_FILE = ROOT / "configs" / "schema" / "meta_schema.json"
LARGE_FILES = ROOT / "large_files.yml"
LOGGING_CONF = ROOT / "configs" / "logging.conf"

# Official checkpoints of Meta's segment-anything release and the md5 of each file.
SAM_CHECKPOINTS = {
    "sam_vit_b_01ec64.pth": "01ec64d29a2fca3f0661936605ae66f8",
    "sam_vit_l_0b3195.pth": "0b3195507c641ddb6910d2bb5adee89c",
    "sam_vit_h_4b8939.pth": "4b8939a88964f0f4ff5f5b2642c598a6",
}
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


def _metadata() -> dict:
    return json.loads(META_FILE.read_text())


def _data_formats(meta: dict) -> dict:
    """``network_data_format`` and every other ``<name>_data_format`` network description."""
    return {key: value for key, value in meta.items() if key.endswith("_data_format")}


def _drop(*keys):
    def edit(meta):
        node = meta
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return edit


def _put(value, *keys):
    def edit(meta):
        node = meta
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


IMAGE = ("network_data_format", "inputs", "image")
PRED = ("network_data_format", "outputs", "pred")

# Each edit breaks one rule of the specification; verify_metadata must reject every one.
BROKEN = [
    ("missing version", _drop("version")),
    ("missing monai_version", _drop("monai_version")),
    ("missing required_packages_version", _drop("required_packages_version")),
    ("missing authors", _drop("authors")),
    ("missing network_data_format", _drop("network_data_format")),
    ("missing outputs", _drop("network_data_format", "outputs")),
    ("missing input channel_def", _drop(*IMAGE, "channel_def")),
    ("missing input num_channels", _drop(*IMAGE, "num_channels")),
    ("missing output dtype", _drop(*PRED, "dtype")),
    ("version is a number", _put(0.1, "version")),
    ("packages as a list", _put(["nibabel"], "required_packages_version")),
    ("num_channels as a string", _put("6", *IMAGE, "num_channels")),
    ("is_patch_data as a string", _put("true", *IMAGE, "is_patch_data")),
    ("channel_def as a list", _put(["FLAIR"], *IMAGE, "channel_def")),
    ("value_range with one bound", _put([0], *PRED, "value_range")),
    ("references as a string", _put("Kirillov 2023", "references")),
    ("extra network without outputs", _put({"inputs": {}}, "classifier_data_format")),
]


def test_metadata_verifies_offline():
    verify_metadata(meta_file=str(META_FILE), filepath=str(SCHEMA_FILE))


def test_metadata_verifies_through_the_bundle_cli():
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata"]
    cmd += ["--meta_file", str(META_FILE), "--filepath", str(SCHEMA_FILE)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


def _broken(edit) -> dict:
    meta = copy.deepcopy(_metadata())
    edit(meta)
    return meta


# MONAI extracts its error message with a regex that is quadratic in the message length (seconds per failure for
# this metadata), so verify_metadata itself sees three representative cases and the schema checks every case.
@pytest.mark.parametrize("case", ["missing authors", "num_channels as a string", "missing input channel_def"])
def test_verify_metadata_rejects_broken_metadata(case, tmp_path):
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(_broken(dict(BROKEN)[case])))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(broken), filepath=str(SCHEMA_FILE))


@pytest.mark.parametrize("edit", [case[1] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_schema_rejects_broken_metadata(edit):
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert not validator.is_valid(_broken(edit))


def test_schema_names_the_official_url_and_version_is_logged():
    meta = _metadata()
    assert meta["schema"].startswith("https://") and meta["schema"].endswith(".json")
    assert meta["version"] in meta["changelog"]


def test_every_channel_has_a_definition():
    meta = _metadata()
    for name, network in _data_formats(meta).items():
        for section in ("inputs", "outputs"):
            for arg, spec in network[section].items():
                if isinstance(spec, dict):
                    expected = {str(i) for i in range(spec["num_channels"])}
                    assert set(spec["channel_def"]) == expected, f"{name}.{section}.{arg}"
    for preset, layout in meta["preset_channel_layouts"].items():
        assert set(layout["channel_def"]) == {str(i) for i in range(layout["num_channels"])}, preset


def test_default_network_is_the_brats_samaug_preset():
    network = _metadata()["network_data_format"]
    image, pred = network["inputs"]["image"], network["outputs"]["pred"]
    assert image["num_channels"] == 6
    assert [image["channel_def"][str(i)] for i in range(4)] == ["FLAIR", "T1", "T1ce", "T2"]
    assert "segmentation prior" in image["channel_def"]["4"] and "boundary prior" in image["channel_def"]["5"]
    assert pred["num_channels"] == 3
    assert [pred["channel_def"][str(i)][-4:] for i in range(3)] == ["(WT)", "(TC)", "(ET)"]


def test_large_files_lists_the_official_sam_checkpoints():
    entries = yaml.safe_load(LARGE_FILES.read_text())["large_files"]
    by_path = {entry["path"]: entry for entry in entries}
    for name, md5 in SAM_CHECKPOINTS.items():
        entry = by_path[f"models/{name}"]
        assert entry["url"] == SAM_URL + name
        assert entry["hash_type"] == "md5" and entry["hash_val"] == md5
        # Meta names each file after the first six hex digits of its md5.
        assert md5.startswith(Path(name).stem.rsplit("_", 1)[1])
    for entry in entries:
        assert urlparse(entry["url"]).scheme == "https"
        assert entry["path"].startswith("models/")
        assert entry.get("hash_type", "md5") in SUPPORTED_HASH_TYPES


def test_download_large_files_reads_the_list(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("monai.bundle.scripts.download_url", lambda **kwargs: calls.append(kwargs))
    (tmp_path / LARGE_FILES.name).write_text(LARGE_FILES.read_text())
    download_large_files(bundle_path=str(tmp_path))
    wanted = {str(tmp_path / "models" / name): md5 for name, md5 in SAM_CHECKPOINTS.items()}
    assert {call["filepath"]: call["hash_val"] for call in calls} == wanted
    assert all(call["hash_type"] == "md5" and call["url"].startswith(SAM_URL) for call in calls)
    assert not (tmp_path / "models").exists()


def test_logging_conf_is_a_console_config_at_info():
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(LOGGING_CONF)
    assert conf["logger_root"]["level"] == "INFO"
    handler = conf["handler_" + conf["logger_root"]["handlers"]]
    assert handler["class"] == "StreamHandler"
    assert "%(asctime)s" in conf["formatter_" + handler["formatter"]]["format"]
