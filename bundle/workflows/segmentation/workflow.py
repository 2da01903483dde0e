"""Small helpers the SAMAug segmentation configs call, so that the JSON files hold wiring and flags, not logic.

``configs/train_samaug_seg.json``, ``configs/evaluate.json`` and ``configs/inference.json`` switch on two flags:

- ``prior_mode`` (``add`` / ``channels`` / ``concat`` / ``none``): with ``none`` no prior transform, mask generator or
  SAM model is built at all (:func:`uses_priors` drives the components' ``_disabled_``), and the spatial transforms
  see only the image and label (:func:`data_keys`).
- ``spatial_dims`` (2 / 3): a 2D network is trained on axial slices cut from the volumes (:func:`crop_size` gives the
  ``[H, W, 1]`` crop that ``SqueezeDimd`` then flattens) and applied slice by slice (:func:`volume_inferer` returns
  MONAI's ``SliceInferer``); a 3D network is trained on crops and applied with a sliding window.

Each helper validates its flag with ``look_up_option``, so a typo fails at parse time with the closest valid name
instead of silently taking the other branch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.utils import look_up_option

from bundle.data.case_ids import case_id_of
from bundle.data.datalist_io import load_checked_section
from bundle.workflows.common import options
from bundle.workflows.segmentation.inputs import PRIOR_MODES

__all__ = [
    "SPATIAL_DIMS",
    "DATALIST_KEYS",
    "uses_priors",
    "is_slice_network",
    "data_keys",
    "interp_modes",
    "crop_size",
    "samples_per_volume",
    "volume_inferer",
    "load_datalist",
    "prior_description",
    "describe_network",
    "network_config",
]

SPATIAL_DIMS = options.SPATIAL_DIMS  # recorded in model cards: the names live in common/options.py
#: datalist fields the segmentation workflows read; the others (slice labels of varying length) would break collation
DATALIST_KEYS = ("case_id", "image", "label")


def uses_priors(prior_mode: str) -> bool:
    """True unless ``prior_mode`` is ``none`` (the raw baseline, which builds no prior transform)."""
    return look_up_option(prior_mode, PRIOR_MODES) != "none"


def is_slice_network(spatial_dims: int) -> bool:
    """True for a 2D network trained and applied on axial slices, False for a 3D network."""
    return look_up_option(int(spatial_dims), SPATIAL_DIMS) == 2


def data_keys(
    prior_mode: str,
    label: bool = True,
    image_key: str = "image",
    prior_key: str = "prior",
    label_key: str = "label",
) -> list[str]:
    """Keys the spatial transforms move together: image, its prior unless ``prior_mode`` is ``none``, and the label.

    The configs move ``CachedSamPriord``'s ``image_prior`` to ``prior``: MONAI's ``Spacingd`` (1.6) treats every
    ``image_*`` entry of a NIfTI image as a legacy meta dictionary and fails on a tensor there.
    """
    keys = [image_key] + ([prior_key] if uses_priors(prior_mode) else [])
    return keys + [label_key] if label else keys


def interp_modes(prior_mode: str, label: bool = True, image_mode: str = "bilinear", label_mode: str = "nearest"):
    """Interpolation modes matching :func:`data_keys`: the priors are resampled like the image, the label nearest."""
    return [image_mode] * len(data_keys(prior_mode, label=False)) + ([label_mode] if label else [])


def _patch(patch_size: Sequence[int]) -> list[int]:
    patch = [int(s) for s in patch_size]
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_size must be three positive sizes [H, W, D], got {list(patch_size)}.")
    return patch


def crop_size(patch_size: Sequence[int], spatial_dims: int) -> list[int]:
    """Training crop ``[H, W, D]`` for a 3D network, ``[H, W, 1]`` (one axial slice) for a 2D network."""
    h, w, d = _patch(patch_size)
    return [h, w, 1] if is_slice_network(spatial_dims) else [h, w, d]


def samples_per_volume(spatial_dims: int, slices: int, crops: int) -> int:
    """Training samples cut from each volume per epoch: ``slices`` axial slices (2D) or ``crops`` patches (3D)."""
    n = int(slices) if is_slice_network(spatial_dims) else int(crops)
    if n < 1:
        raise ValueError(f"samples per volume must be >= 1, got {n}.")
    return n


def volume_inferer(
    spatial_dims: int,
    patch_size: Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    mode: str = "gaussian",
) -> Inferer:
    """The MONAI inferer that applies the network to a whole ``[B, C, H, W, D]`` volume.

    2D: ``SliceInferer`` over the axial (last) axis with in-plane windows ``patch_size[:2]``; 3D:
    ``SlidingWindowInferer`` with windows ``patch_size``. Wrap it in
    :class:`bundle.workflows.segmentation.inferer.SamAugInferer`.
    """
    h, w, d = _patch(patch_size)
    if is_slice_network(spatial_dims):
        return SliceInferer(
            roi_size=(h, w), sw_batch_size=sw_batch_size, spatial_dim=2, overlap=overlap, mode=mode, progress=False
        )
    return SlidingWindowInferer(roi_size=(h, w, d), sw_batch_size=sw_batch_size, overlap=overlap, mode=mode)


def load_datalist(
    datalist: str | os.PathLike, section: str, data_root: str | os.PathLike, keys: Sequence[str] = DATALIST_KEYS
) -> list[dict]:
    """Entries of one datalist section with paths joined to ``data_root``, keeping only ``keys``, after the case check.

    Every case of the section goes through :func:`bundle.data.case_check.check_case_files` first (readable,
    complete, 3D, one grid, label values in the datalist's label set; files unchanged since the datalist recorded its
    checks cost one ``stat``), so a bad case stops the run before any prior, network or epoch. The label is checked
    only when ``keys`` holds ``label``. ``case_id`` is reduced to its basename.

    Raises:
        MissingInputError: the datalist or a file of a case does not exist.
        InputError: the datalist cannot be read, lacks the section or a key of a case, two cases share an id, or a
            case's files fail the check; the message names the file at fault (:mod:`bundle.data.datalist_io`).
    """
    with_label = "label" in keys
    entries = load_checked_section(
        datalist, section, data_root, required=("image", "label") if with_label else ("image",),
        label_key="label" if with_label else None,
    )
    out = []
    for entry in entries:
        item = {k: entry[k] for k in keys if k in entry}
        if "case_id" in item:
            item["case_id"] = case_id_of(item)
        out.append(item)
    return out


def prior_description(prior_mode: str, generator: Any = None) -> dict:
    """What made the priors of a run, for TensorBoard text and report tags.

    Returns:
        ``{"prior_mode", "generator", "is_sam", "note", "signature"}``; ``generator`` is the generator's own name
        (``sam_automatic_masks``, ``sam_box_grid_masks`` or ``region_proposals``), None without priors. The note
        names the SAM model and says plainly when the weight-free fallback stood in for SAM.
    """
    if not uses_priors(prior_mode):
        return {"prior_mode": "none", "generator": None, "is_sam": False, "signature": None,
                "note": "raw baseline: no SAM priors are computed or used"}
    if generator is None or not hasattr(generator, "signature"):
        raise ValueError(f"prior_mode={prior_mode!r} needs a mask generator with signature(), got {generator!r}.")
    signature = generator.signature()
    name = signature.get("generator")
    is_sam = "sam" in signature
    if is_sam:
        prompts = "box grid" if name == "sam_box_grid_masks" else "point grid"
        note = f"SAM automatic masks ({prompts}) from {signature['sam']['model_type']}"
    else:
        note = (f"weight-free fallback generator {name!r} (priors#sam_model_type 'fallback'): classical region "
                "proposals stand in for SAM's masks; these priors are NOT SAM priors")
    return {"prior_mode": prior_mode, "generator": name, "is_sam": is_sam, "note": note, "signature": signature}


_UNET_FIELDS = ("in_channels", "out_channels", "channels", "strides", "kernel_size", "up_kernel_size", "num_res_units",
                "act", "norm", "dropout", "bias", "adn_ordering")


def describe_network(network: Any) -> dict:
    """The model card entry of a segmentation network (MONAI ``UNet``): its constructor arguments as JSON.

    Raises:
        ValueError: another network type (the card cannot rebuild it; add it here).
    """
    from monai.networks.nets import UNet

    if type(network) is not UNet:
        raise ValueError(f"the model card can describe MONAI UNet networks, not {type(network).__name__}.")
    args = {"spatial_dims": int(network.dimensions)}
    for name in _UNET_FIELDS:
        value = getattr(network, name)
        args[name] = list(value) if isinstance(value, tuple) else value
    return {"name": "UNet", **args}


def network_config(entry: dict) -> dict:
    """The ``network_def`` config of a card entry written by :func:`describe_network` (lists back to tuples).

    The card names the network (``name``, checked against the card schema's allow-list); only here does it become a
    ``_target_``, so no card value is ever instantiated as an arbitrary class.

    Raises:
        ValueError: a network the card cannot describe.
    """
    if entry.get("name") != "UNet":
        raise ValueError(f"the model card can describe MONAI UNet networks, not {entry.get('name')!r}.")
    args = {k: tuple(v) if isinstance(v, list) and k in ("act", "norm") else v for k, v in entry.items() if k != "name"}
    return {"_target_": "monai.networks.nets.UNet", **args}
