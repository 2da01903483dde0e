import os

import pytest

from bundle.atomic import atomic_path, write_bytes_atomic, write_text_atomic


def test_write_text_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["a.json"]


def test_failure_keeps_previous_file_and_cleans_up(tmp_path):
    target = tmp_path / "prior.nii.gz"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["prior.nii.gz"]


@pytest.mark.parametrize("name, suffix", [("x.nii.gz", ".nii.gz"), ("model.pt", ".pt"), ("noext", "")])
def test_temporary_keeps_extension_for_format_sniffing_writers(tmp_path, name, suffix):
    with atomic_path(tmp_path / name) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(suffix)
        tmp.write_bytes(b"x")
    assert (tmp_path / name).read_bytes() == b"x"
