"""Helpers of the reliability drills: argument lists of the bundle's real commands, and the :mod:`forkserver` client."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("workflows", "workflows/classification"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from cls_utils import META_CLS, TINY_CLS, cls_files
from workflow_utils import METADATA, REPO, TINY, config_files

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
PRECOMPUTE_FILES = [str(REPO / "configs" / f) for f in ("sam_priors.json", "precompute_priors.json")]


def bundle_argv(run_id: str, files: list[str], overrides: dict, meta: bool = True) -> list[str]:
    """``-m monai.bundle run RUN_ID --config_file [...] --key value ...`` (values JSON-encoded unless strings)."""
    argv = ["-m", "monai.bundle", "run", run_id, "--config_file", json.dumps(files)]
    if meta:
        argv += ["--meta_file", METADATA]
    for key, value in overrides.items():
        argv += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return argv


def precompute_argv(data_root: Path, datalist: Path, cache: Path, **overrides) -> list[str]:
    keys = {"bundle_root": str(cache.parent), "dataset_dir": str(data_root), "datalist": str(datalist),
            "prior_cache_dir": str(cache), "priors#sam_model_type": "fallback", **overrides}
    return bundle_argv("precompute", PRECOMPUTE_FILES, keys, meta=False)


def training_argv(data_root: Path, datalist: Path, work: Path, workflow: str = "samaug", **overrides) -> list[str]:
    """The ``run training`` command of ``workflow``: ``samaug`` (segmentation) or ``samaug_c`` (classification,
    BraTS whole-tumour slices), tiny settings, outputs under ``work``."""
    keys = {"bundle_root": str(REPO), "dataset_dir": str(data_root), "datalist": str(datalist),
            "prior_cache_dir": str(work / "priors"), "output_dir": str(work / "run"), "ckpt_dir": str(work / "models")}
    if workflow == "samaug_c":  # 2 training cases x 16 slices in batches of 16: 2 iterations per epoch, as samaug
        return bundle_argv("training", cls_files("brats"),
                           {**TINY_CLS, **keys, "task": "brats_wt", "batch_size": 16, "meta_file": META_CLS, **overrides},
                           meta=False)
    return bundle_argv("training", config_files("brats"), {**TINY, **keys, **overrides})


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


class Commands:
    """Client of a :mod:`forkserver` process: ``run(argv, out)`` runs one command, its output files under ``out``."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(HERE / "forkserver.py")], cwd=REPO, env=ENV,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.process.stdout.readline()
        assert json.loads(ready) == {"ready": True}, ready
        self.pending: Path | None = None  # output folder of a command started and not waited for
        self.pending_pid: int | None = None

    def run(self, argv: list[str], out: Path, cwd: Path = REPO, fsize: int | None = None, drop_root: bool = False,
            timeout: int = 240) -> Result:
        """Run a command to its end; ``fsize`` / ``drop_root`` (``drop_file_capabilities``): see :mod:`forkserver`."""
        self.start(argv, out, cwd, fsize, drop_root, timeout, announce=False)
        return self.wait(out)

    def start(self, argv: list[str], out: Path, cwd: Path = REPO, fsize: int | None = None, drop_root: bool = False,
              timeout: int = 240, announce: bool = True) -> int | None:
        """Start a command; returns its process id (the leader of its process group) when ``announce``."""
        if self.pending is not None:  # a test failed before its wait: end that command, collect its exit status
            if self.pending_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pending_pid, signal.SIGKILL)
            self.wait(self.pending)
        out.mkdir(parents=True, exist_ok=True)
        request = {"argv": argv, "cwd": str(cwd), "stdout": str(out / "stdout.txt"), "stderr": str(out / "stderr.txt"),
                   "fsize": fsize, "drop_file_capabilities": drop_root, "timeout": timeout, "announce": announce}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        self.pending, self.pending_pid = out, None
        if announce:
            self.pending_pid = json.loads(self.process.stdout.readline())["pid"]
        return self.pending_pid

    def wait(self, out: Path) -> Result:
        """The result of the command started last (whose output files are under ``out``)."""
        rc = json.loads(self.process.stdout.readline())["rc"]
        self.pending = None
        text = {name: (out / f"{name}.txt").read_text(errors="replace") for name in ("stdout", "stderr")}
        return Result(rc, text["stdout"], text["stderr"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def copy_set(data, folder: Path):
    """A private copy of a phantom set (its datalist's paths are relative, so the copy points at its own files)."""
    shutil.copytree(data.root, folder)
    return type(data)(data.preset, folder, folder / data.datalist.name, data.cases)
