"""bundle.hashing: file, folder and signature hashes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bundle.hashing import canonical_json, file_sha256, json_sha256, path_sha256


def test_file_hash_is_sha256_of_the_bytes(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1000)
    assert file_sha256(f, chunk_size=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert path_sha256(f) == file_sha256(f)


def test_folder_hash_depends_on_names_and_contents_not_location(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root / "sub").mkdir(parents=True)
        (tmp_path / root / "IM1.dcm").write_bytes(b"1")
        (tmp_path / root / "sub" / "IM2.dcm").write_bytes(b"2")
    assert path_sha256(tmp_path / "a") == path_sha256(tmp_path / "b")
    (tmp_path / "b" / "sub" / "IM2.dcm").rename(tmp_path / "b" / "sub" / "IM3.dcm")
    assert path_sha256(tmp_path / "a") != path_sha256(tmp_path / "b")
    (tmp_path / "a" / "IM1.dcm").write_bytes(b"x")
    assert path_sha256(tmp_path / "a") != path_sha256(tmp_path / "b")


def test_json_hash_ignores_key_order():
    assert json_sha256({"a": 1, "b": [1.5, None]}) == json_sha256({"b": [1.5, None], "a": 1})
    assert canonical_json({"b": 1, "a": True}) == '{"a":true,"b":1}'


@pytest.mark.parametrize("bad", [{"x": np.float32(1.0)}, {"x": object()}, {"x": float("nan")}, {"x": {1, 2}}])
def test_non_json_values_raise(bad):
    with pytest.raises(TypeError, match="not plain JSON"):
        json_sha256(bad)
