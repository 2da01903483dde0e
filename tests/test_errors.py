"""Tests of bundle.errors: the project's errors and the one ERROR line a failing command ends with."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from bundle.errors import BundleError, FileError, InputError, MissingInputError, error_line, exception_chain


def _wrapped(inner: BaseException) -> RuntimeError:
    """``inner`` wrapped twice, as MONAI's config runner and Compose wrap a transform's error."""
    try:
        try:
            raise inner
        except BaseException as err:
            raise RuntimeError("applying transform <LoadCheckedImaged>") from err
    except RuntimeError as err:
        try:
            raise RuntimeError("Failed to evaluate ConfigExpression") from err
        except RuntimeError as outer:
            return outer


@pytest.mark.parametrize(
    "error, line",
    [
        (InputError("/d/x_t1.nii.gz", "contains 3 non-finite values"), "ERROR: /d/x_t1.nii.gz: contains 3 non-finite values"),
        (MissingInputError("/d/dl.json", "datalist not found"), "ERROR: /d/dl.json: datalist not found"),
        (BundleError("training stopped: the loss is nan\nmore"), "ERROR: training stopped: the loss is nan"),
        (PermissionError(13, "Permission denied", "/models"), "ERROR: /models: Permission denied"),
        (KeyError("label"), "ERROR: KeyError: 'label'"),
    ],
)
def test_error_line_finds_the_project_error_under_wrappers(error, line):
    assert error_line(_wrapped(error)) == line


def test_outermost_project_error_wins():
    inner = InputError("/d/a.nii.gz", "truncated")
    try:
        try:
            raise inner
        except InputError as err:
            raise InputError("/d/dl.json", "training[2] (a): its image cannot be read") from err
    except InputError as outer:
        assert error_line(outer) == "ERROR: /d/dl.json: training[2] (a): its image cannot be read"
        assert list(exception_chain(outer)) == [outer, inner]


def _chain(*errors: BaseException) -> BaseException:
    """``errors[0]`` raised from ``errors[1]`` raised from ... (outermost first)."""
    for outer, inner in zip(errors[-2::-1], errors[:0:-1]):
        outer.__cause__ = inner
    return errors[0]


def test_outermost_error_naming_a_file_wins_over_its_bare_cause():
    """A library's error that names the file (not a project error) beats the innermost cause that names none."""
    error = _chain(RuntimeError("Failed to evaluate ConfigExpression"),
                   ValueError("/c/p/case_1/pam_logits.0123456789ab.nii.gz: cached prior cannot be read (EOFError: x)"),
                   EOFError("Compressed file ended before the end-of-stream marker was reached"))
    assert error_line(error) == ("ERROR: /c/p/case_1/pam_logits.0123456789ab.nii.gz: cached prior cannot be read "
                                 "(EOFError: x)")
    relative = _chain(RuntimeError("applying transform <x.Y object at 0x7f>"), ValueError("entry.json: broken"),
                      EOFError("end"))
    assert error_line(relative) == "ERROR: entry.json: broken"
    # messages that merely contain a colon keep the innermost cause
    assert error_line(_chain(RuntimeError("applying transform <x.Y object at 0x7f>: failed"), EOFError("end"))) \
        == "ERROR: EOFError: end"


def test_worker_reraised_error_keeps_its_message():
    text = ("Caught InputError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            "  File \"x.py\", line 1\nbundle.errors.InputError: /d/b.nii: contains 1 non-finite values")
    assert error_line(InputError(text)) == "ERROR: /d/b.nii: contains 1 non-finite values"


def test_errors_are_what_callers_catch_and_pickle():
    missing = MissingInputError("/d/m.pt", "does not exist")
    assert isinstance(missing, FileNotFoundError) and isinstance(missing, ValueError)
    assert missing.filename == "/d/m.pt" and str(missing) == "/d/m.pt: does not exist"
    again = pickle.loads(pickle.dumps(InputError("/d/a", "bad")))
    assert (again.path, again.problem, str(again)) == ("/d/a", "bad", "/d/a: bad")
    assert isinstance(InputError("/d/a", "bad"), FileError)


@pytest.mark.parametrize(
    "code, last_line",
    [
        ("raise RuntimeError('Failed to evaluate') from InputError('/d/x.nii.gz', 'is truncated')",
         "ERROR: /d/x.nii.gz: is truncated"),
        ("raise ValueError('plain')", "ERROR: ValueError: plain"),
    ],
)
def test_uncaught_error_ends_with_one_error_line(code, last_line):
    """Importing the package installs the hook: the traceback stays, one line follows it."""
    script = f"import bundle\nfrom bundle.errors import InputError\n{code}\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert lines[-1] == last_line


BUSY_POOL = """
import time
from multiprocessing.pool import ThreadPool

import torch

import bundle


def case(i):
    if i == 0:
        time.sleep(0.3)
        raise RuntimeError("case 0 failed")
    x, end = torch.randn(256, 256), time.monotonic() + 60
    while time.monotonic() < end:  # a prior computation in torch's C++ code, as CacheDataset's workers run them
        torch.nn.functional.layer_norm(x, (256,))


with ThreadPool(2) as pool:
    list(pool.imap(case, range(4)))
"""


def test_failure_with_busy_pool_workers_exits_cleanly():
    """One case fails while CacheDataset's other workers compute: exit 1 at once, not SIGABRT at shutdown."""
    result = subprocess.run([sys.executable, "-c", BUSY_POOL], capture_output=True, text=True, timeout=50)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "terminate called" not in result.stderr
    assert "ERROR: RuntimeError: case 0 failed" in result.stderr
    assert "thread-pool worker(s) still busy" in result.stderr.strip().splitlines()[-1]
