"""Shared fixtures: small real SAM checkpoints made by the tests themselves, and phantom datasets.

``tiny_sam_checkpoint``: a ``tiny`` SAM (256 input) with random weights, saved and re-loaded through the real
checkpoint path. ``shapes_sam_checkpoint``: the same architecture trained briefly on synthetic shapes
(:mod:`bundle.testing.shapes_training`) so that its masks follow image structure; training takes about 30 s on two
cores, so the file is kept in a cache folder between sessions (``SAM_PRIORS_TEST_CACHE``, default
``~/.cache/monai-sam-priors-tests``), keyed by the training code and its parameters.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import pytest
import torch

import bundle.sam  # noqa: F401  (makes segment_anything importable without torchvision)

SHAPES_STEPS = 60
SHAPES_BATCH = 4


def _cache_dir() -> Path:
    return Path(os.environ.get("SAM_PRIORS_TEST_CACHE", Path.home() / ".cache" / "monai-sam-priors-tests"))


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory) -> Path:
    from bundle.sam.loading import build_sam

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_tiny_random.pth"
    torch.save(build_sam("tiny").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def shapes_sam_checkpoint() -> Path:
    import bundle.sam.loading as loading
    import bundle.testing.shapes_training as training

    source = Path(training.__file__).read_bytes() + Path(loading.__file__).read_bytes()
    key = hashlib.sha256(source + f"{SHAPES_STEPS}-{SHAPES_BATCH}-{torch.__version__}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"sam_tiny_shapes_{key}.pth"
    if not path.is_file():
        training.make_shapes_checkpoint(path, "tiny", steps=SHAPES_STEPS, batch=SHAPES_BATCH, seed=0)
    return path


@pytest.fixture(scope="session")
def shapes_sam(shapes_sam_checkpoint):
    from bundle.sam.loading import load_sam

    return load_sam("tiny", shapes_sam_checkpoint)


@pytest.fixture(autouse=True)
def _quiet_known_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision could not be imported.*")
        warnings.filterwarnings("ignore", message=".*sam_model_type is 'fallback'.*")
        yield
