"""Tests of bundle.priors.transforms (SamPrior, SamPriord) on NIfTI volumes read by MONAI's LoadImage."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from bundle.priors import samaug_prior_maps, samaugc_prior_map
from bundle.priors.transforms import SAMAUG_KINDS, SamPrior, SamPriord
from bundle.sam.fallback import RegionProposalMasks
from bundle.sam.slices import SliceWindow

AFFINE = np.array([[-0.9, 0.0, 0.0, 20.0], [0.0, -0.9, 0.0, 15.0], [0.0, 0.0, 3.0, -7.0], [0.0, 0.0, 0.0, 1.0]])


class SpyGenerator:
    """The real fallback generator, recording every batch of slices it is given."""

    def __init__(self, inner=None):
        self.inner = inner if inner is not None else _fallback()
        self.batches: list[np.ndarray] = []

    def generate_batch(self, images):
        self.batches.append(np.array(images))
        return self.inner.generate_batch(images)

    def signature(self):
        return self.inner.signature()

    @property
    def images(self) -> int:
        return sum(len(b) for b in self.batches)


def _fallback(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RegionProposalMasks(**kwargs)


def _discs(shape, empty=(), seed=0) -> np.ndarray:
    """``[H, W, D]`` MR-like volume: two discs per slice on a dark background; slices in ``empty`` are all zero."""
    h, w, d = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    vol = np.zeros(shape, np.float32)
    for k in range(d):
        if k in empty:
            continue
        img = np.full((h, w), 20.0)
        for value in (300.0, 600.0):
            cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
            r = rng.uniform(0.12, 0.25) * min(h, w)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = value
        vol[..., k] = img + rng.normal(0, 5, (h, w))
    return vol


def _load(tmp_path, data, name="image.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return LoadImage(image_only=True, ensure_channel_first=True)(str(path))


def _reference(volume, window, generator, kinds=SAMAUG_KINDS):
    """Priors computed slice by slice, directly from the generator's records."""
    fitted = window.fit(volume)
    keep = window.nonempty(volume, fitted)
    h, w, d = volume.shape[1:]
    out = np.zeros((len(kinds), h, w, d), np.float32)
    for k in np.flatnonzero(keep):
        rgb = window.slices(volume, fitted, [k])[0]
        records = generator.generate_batch([rgb])[0]
        maps = dict(zip(SAMAUG_KINDS, samaug_prior_maps(records, (h, w))))
        maps["samaugc_prior"] = samaugc_prior_map(records, (h, w))
        for c, kind in enumerate(kinds):
            out[c, ..., k] = maps[kind]
    return out


@pytest.fixture
def volume(tmp_path):
    return _load(tmp_path, _discs((48, 40, 6), empty=(0, 5)))


def test_output_contract(volume):
    prior = SamPrior(_fallback(), window="mr_percentile")(volume)
    assert isinstance(prior, MetaTensor)
    assert prior.shape == (2, 48, 40, 6) and prior.dtype == torch.float32
    np.testing.assert_allclose(prior.affine.numpy(), AFFINE, atol=1e-6)
    assert prior.meta["channel_names"] == ["sam_seg_prior", "sam_boundary_prior"]
    assert prior.meta["filename_or_obj"] == volume.meta["filename_or_obj"]
    assert prior.meta["sam_prior_slices"] == 4
    assert set(np.unique(prior[1].numpy())) == {0.0, 1.0}
    assert prior[0].max() > 0


def test_priors_are_the_generators_records_slice_by_slice(volume):
    window = SliceWindow("mr_percentile")
    prior = SamPrior(_fallback(), window=window, slices_per_batch=3)(volume)
    np.testing.assert_allclose(prior.numpy(), _reference(volume, window, _fallback()), atol=1e-6)


def test_empty_slices_are_zero_and_never_sent(volume):
    spy = SpyGenerator()
    prior = SamPrior(spy, window="mr_percentile", slices_per_batch=3)(volume)
    assert spy.images == 4
    assert [len(b) for b in spy.batches] == [3, 1]
    assert all(b.dtype == np.uint8 and b.shape[1:] == (48, 40, 3) and b.reshape(len(b), -1).max(1).min() > 0
               for b in spy.batches)
    assert not prior[..., 0].any() and not prior[..., 5].any()
    assert prior[..., 1:5].flatten(1, 2).amax(dim=1).min() > 0  # every non-empty slice got some prior


@pytest.mark.parametrize("slices_per_batch", [1, 2, 16])
def test_batching_does_not_change_the_result(volume, slices_per_batch):
    base = SamPrior(_fallback(), window="mr_percentile", slices_per_batch=4)(volume)
    other = SamPrior(_fallback(), window="mr_percentile", slices_per_batch=slices_per_batch)(volume)
    assert torch.equal(base.as_tensor(), other.as_tensor())


def test_constant_volume_gives_zero_priors_without_generator(tmp_path):
    spy = SpyGenerator()
    prior = SamPrior(spy)(_load(tmp_path, np.full((16, 16, 3), 42.0, np.float32)))
    assert prior.shape == (2, 16, 16, 3) and not prior.any() and spy.images == 0


@pytest.mark.parametrize(
    "shape",
    [(32, 36, 1), (8, 120, 3), (120, 8, 2), (600, 600, 1)],
    ids=["single-slice", "wide", "tall", "large"],
)
def test_slice_shapes(tmp_path, shape):
    window = SliceWindow("mr_percentile")
    volume = _load(tmp_path, _discs(shape, seed=1))
    prior = SamPrior(_fallback(), window=window)(volume)
    assert prior.shape == (2, *shape)
    assert prior[0].max() > 0 and prior[1].max() == 1.0
    if shape[0] * shape[1] < 10_000:  # the large slice: shape and non-zero priors are enough
        np.testing.assert_allclose(prior.numpy(), _reference(volume, window, _fallback()), atol=1e-6)


def test_samaugc_kind_and_channel_order(volume):
    kinds = ("samaugc_prior", "sam_seg_prior")
    window = SliceWindow("mr_percentile")
    prior = SamPrior(_fallback(), window=window, kinds=kinds)(volume)
    assert prior.meta["channel_names"] == list(kinds)
    assert prior[0].min() >= 0.0 and prior[0].max() == pytest.approx(1.0)
    np.testing.assert_allclose(prior.numpy(), _reference(volume, window, _fallback(), kinds), atol=1e-6)


CHANNEL_ERRORS = [
    # window arguments, channels of the volume, expected words
    ({"preset": "mr_percentile", "channels": 1}, 1, "1 channel"),
    ({"preset": "minmax", "channels": (0, 1, 2)}, 2, "2 channel"),
]


@pytest.mark.parametrize("window, channels, message", CHANNEL_ERRORS)
def test_wrong_number_of_channels(tmp_path, window, channels, message):
    data = np.stack([_discs((16, 16, 2))] * channels, axis=-1)  # channels last on disk: LoadImage moves them first
    volume = _load(tmp_path, data)
    assert volume.shape[0] == channels
    with pytest.raises(ValueError) as err:
        SamPrior(_fallback(), window=window)(volume)
    assert message in str(err.value) and "image.nii.gz" in str(err.value)


def test_three_modalities_as_rgb(tmp_path):
    data = np.stack([_discs((24, 24, 2), seed=s) for s in (1, 2, 3)], axis=-1)
    spy = SpyGenerator()
    SamPrior(spy, window={"preset": "minmax", "channels": (2, 0, 1)})(_load(tmp_path, data))
    rgb = spy.batches[0]
    assert not np.array_equal(rgb[..., 0], rgb[..., 1])  # three different modalities, not a replicated one


def test_progress_counts_every_slice(volume):
    done = []
    SamPrior(_fallback(), window="mr_percentile", slices_per_batch=3)(volume, progress=done.append)
    assert sum(done) == 6 and done[0] == 2  # the two empty slices are reported at once


def test_no_warning_for_metatensor_input(volume):
    generator = _fallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SamPrior(generator, window="mr_percentile")(volume)
    assert not [w for w in caught if "affine" in str(w.message)], [str(w.message) for w in caught]


def test_plain_tensor_input():
    data = torch.from_numpy(_discs((20, 20, 2)))[None]
    prior = SamPrior(_fallback())(data)
    assert isinstance(prior, MetaTensor) and torch.equal(prior.affine, torch.eye(4, dtype=torch.float64))


def test_dictionary_wrapper(volume):
    data = {"image": volume, "label": torch.zeros(1, 48, 40, 6), "case_id": "c1"}
    out = SamPriord(keys="image", generator=_fallback(), window="mr_percentile")(data)
    assert set(out) == {"image", "label", "case_id", "image_prior"}
    assert out["image"] is volume
    ref = SamPrior(_fallback(), window="mr_percentile")(volume)
    assert torch.equal(out["image_prior"].as_tensor(), ref.as_tensor())
    renamed = SamPriord(keys="image", output_postfix="_sam", generator=_fallback(), kinds=["sam_boundary_prior"])(data)
    assert renamed["image_sam"].shape == (1, 48, 40, 6)
    assert SamPriord(keys="other", allow_missing_keys=True, generator=_fallback())(data).keys() == data.keys()


def test_with_sam_automatic_masks(tmp_path, shapes_sam):
    from bundle.sam.automatic import SamAutomaticMasks
    from bundle.sam.engine import SamEngine

    volume = _load(tmp_path, _discs((40, 40, 3), empty=(1,)))
    generator = SamAutomaticMasks(SamEngine(shapes_sam), points_per_side=4, pred_iou_thresh=0.0,
                                  stability_score_thresh=0.5)
    window = SliceWindow("mr_percentile")
    prior = SamPrior(generator, window=window)(volume)
    assert prior.meta["sam_prior_slices"] == 2 and prior[0].max() > 0
    np.testing.assert_allclose(prior.numpy(), _reference(volume, window, generator), atol=1e-5)
    assert prior.shape == (2, 40, 40, 3) and not prior[..., 1].any()


def test_signature():
    sig = SamPrior(_fallback(), window="ct_abdomen").signature()
    assert sig["generator"]["generator"] == "region_proposals"
    assert sig["window"]["preset"] == "ct_abdomen" and sig["kinds"] == list(SAMAUG_KINDS) and "samaugc" not in sig
    sig_c = SamPrior(_fallback(), kinds=["samaugc_prior"], samaugc_combine="max").signature()
    assert sig_c["samaugc"] == {"score": "stability_score", "combine": "max"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"kinds": ["sam_seg"]}, ValueError, "sam_seg_prior"),
        ({"kinds": []}, ValueError, "at least one"),
        ({"slices_per_batch": 0}, ValueError, "slices_per_batch"),
        ({"window": 3}, TypeError, "window"),
        ({"samaugc_score": "iou"}, ValueError, "predicted_iou"),
        ({"samaugc_combine": "mean"}, ValueError, "max"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SamPrior(_fallback(), **kwargs)
