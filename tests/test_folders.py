"""Tests of bundle.folders: output folders checked (writable, with room) and tidied before a run starts."""

from __future__ import annotations

import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from bundle.atomic import process_start_time
from bundle.errors import error_line
from bundle.folders import OutputFolderError, check_writable_folder, checkpoint_bytes, prepare_output_folders

Usage = namedtuple("Usage", "total used free")


def test_missing_folders_are_judged_by_their_parent_and_not_created(tmp_path):
    folder = check_writable_folder(tmp_path / "models" / "run1", required_bytes=1)
    assert folder == tmp_path / "models" / "run1" and list(tmp_path.iterdir()) == []


def test_folder_that_is_a_file(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(OutputFolderError) as info:
        check_writable_folder(tmp_path / "models", what="ckpt_dir")
    assert str(info.value).startswith(str(tmp_path / "models")) and "ckpt_dir is a file, not a folder" in str(info.value)
    with pytest.raises(OutputFolderError, match=f"ckpt_dir cannot be created: {tmp_path / 'models'} is a file"):
        check_writable_folder(tmp_path / "models" / "sub", what="ckpt_dir")


def test_unwritable_folder(tmp_path, monkeypatch):
    def refuse(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)  # root ignores permission bits: refuse the write itself
    with pytest.raises(OutputFolderError) as info:
        prepare_output_folders({"ckpt_dir": tmp_path / "models"})
    assert error_line(info.value) == (f"ERROR: {tmp_path / 'models'}: ckpt_dir is not writable (checked in {tmp_path}, "
                                      "where it would be created): Permission denied")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(OutputFolderError, match="is not writable"):
        check_writable_folder(folder)


def test_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 << 30, (10 << 30) - (5 << 20), 5 << 20))
    with pytest.raises(OutputFolderError) as info:
        prepare_output_folders({"ckpt_dir": tmp_path}, required_bytes=100 << 20)
    message = str(info.value)
    assert message.startswith(str(tmp_path)) and "ckpt_dir has 5.0 MiB free, but this run needs at least" in message


def test_checkpoint_bytes_counts_weights_and_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.BatchNorm1d(10))
    weights = (110 + 20) * 4 + (20 * 4 + 8)  # parameters, then running mean/var (float32) and the step count (int64)
    assert checkpoint_bytes(net) == 4 * weights and checkpoint_bytes(None) == 0
    assert checkpoint_bytes(torch.nn.DataParallel(net), copies=1) == weights


def test_prepare_removes_leftovers_of_killed_runs(tmp_path):
    leftover = tmp_path / ".model.tmp-4194311-0123abcd.pt"  # a pid that does not exist
    leftover.write_bytes(b"half")
    old = process_start_time() - 60  # older than this process: a long test session may have started minutes ago
    os.utime(leftover, (old, old))
    removed = prepare_output_folders({"ckpt_dir": tmp_path, "output_dir": None})
    assert removed == {"ckpt_dir": [leftover]} and not leftover.exists()
