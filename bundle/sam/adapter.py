"""SAM adapter files: what a fine-tuning run learned on top of a published checkpoint, in one small torch file.

A fine-tuned SAM differs from its base checkpoint only in its LoRA updates (:mod:`bundle.sam.lora`), its prompt
encoder and its mask decoder. An adapter file holds exactly those tensors and names the base it was trained on by
the base checkpoint's sha256, so it is a few MB instead of a full checkpoint (0.04 - 2.5 GB), it can be shared
without redistributing the base weights, and it can never be applied to another base by mistake.

The file is a plain dict, readable with ``torch.load(..., weights_only=True)``::

    {"format": "bundle-sam-adapter/1",
     "base": {"model_type": "lite_medsam", "checkpoint_sha256": "79d8..."},
     "lora": {"rank": 8, "alpha": 8.0, "modules": ["image_encoder.layers.1.blocks.0.attn.qkv", ...]},
     "state": {"image_encoder.layers.1.blocks.0.attn.qkv.lora_q_a.weight": tensor, ...,
               "prompt_encoder.*": tensor, ..., "mask_decoder.*": tensor, ...},
     "extra": {...}}                       # JSON metadata of the run that trained it

:func:`save_adapter` writes it atomically; :func:`load_adapter` checks the base, applies LoRA with the recorded
rank and alpha, loads every tensor strictly and, for inference, merges the updates into the encoder
(:func:`bundle.sam.loading.load_sam` does all of this from ``adapter=``). The adapter's sha256 then joins the model's
:meth:`~bundle.sam.loading.SamInfo.signature`, so priors computed with and without it never share a cache entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from bundle.atomic import atomic_path
from bundle.checkpoint_files import CheckpointError, load_problem
from bundle.sam.lora import (
    LORA_PARAMETERS,
    TRAINED_PREFIXES,
    apply_lora,
    has_lora,
    lora_config,
    lora_modules,
    lora_state_dict,
    merge_lora,
)

__all__ = ["ADAPTER_FORMAT", "adapter_state_dict", "save_adapter", "read_adapter", "adapter_header", "load_adapter"]

#: the ``format`` entry of adapter files this module writes and reads
ADAPTER_FORMAT = "bundle-sam-adapter/1"
_FORMAT_FAMILY = ADAPTER_FORMAT.split("/")[0] + "/"


def _base_of(sam: nn.Module, what: str) -> dict:
    info = getattr(sam, "sam_info", None)
    if info is None:
        raise ValueError(f"cannot {what}: the SAM model carries no sam_info (build it with bundle.sam.load_sam)")
    return {"model_type": info.model_type, "checkpoint_sha256": info.checkpoint_sha256}


def adapter_state_dict(sam: nn.Module) -> dict[str, torch.Tensor]:
    """What tuning changes, by state-dict key: the LoRA tensors, the prompt encoder and the mask decoder (views)."""
    state = lora_state_dict(sam)
    state.update({k: v for k, v in sam.state_dict().items() if k.startswith(TRAINED_PREFIXES)})
    return state


def save_adapter(sam: nn.Module, path: str | os.PathLike, extra: Mapping | None = None) -> Path:
    """Write the adapter of a LoRA-adapted SAM to ``path``, atomically.

    Args:
        sam: a model loaded from a checkpoint (:func:`bundle.sam.load_sam`) with LoRA applied
            (:func:`bundle.sam.lora.apply_lora`) and not merged.
        path: the file to write (conventionally ``*.pt``); its folder is created.
        extra: JSON-able metadata saved with it (training run, data, metrics).

    Returns:
        ``path``.

    Raises:
        ValueError: the model has random weights (no checkpoint sha256: the adapter would fit no published base),
            carries no LoRA (or only merged LoRA), or ``extra`` is not JSON data.
    """
    base = _base_of(sam, "save an adapter")
    if not base["checkpoint_sha256"]:
        raise ValueError(
            f"cannot save an adapter of SAM {base['model_type']} with random weights (no checkpoint sha256): an "
            "adapter is tied to its base checkpoint; fine-tune a model loaded with load_sam(model_type, checkpoint)"
        )
    if not has_lora(sam):
        raise ValueError("cannot save an adapter: the SAM model carries no LoRA (apply_lora(sam) first; a merged "
                         "adapter can no longer be separated from the encoder's weights)")
    try:
        extra = json.loads(json.dumps(dict(extra or {}), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"adapter metadata (extra) must be plain JSON data: {err}") from err
    config = lora_config(sam)
    # clone: a view would drag its whole storage into the file, and a GPU tensor would need CUDA to read
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapter_state_dict(sam).items()}
    payload = {"format": ADAPTER_FORMAT, "base": base, "lora": config, "state": state, "extra": extra}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _describe(obj) -> str:
    if isinstance(obj, Mapping):
        if "prompt_encoder.no_mask_embed.weight" in obj or any(
                isinstance(obj.get(k), Mapping) for k in ("model", "state_dict", "network")):
            return "a SAM checkpoint (state dict), not an adapter: pass it as the checkpoint"
        fmt = obj.get("format")
        if isinstance(fmt, str) and fmt.startswith(_FORMAT_FAMILY):
            return f"an adapter of format {fmt!r}, which this version does not read (it reads {ADAPTER_FORMAT!r})"
        return f"not a SAM adapter (a dict with keys {sorted(map(str, obj))[:5]}, no format {ADAPTER_FORMAT!r})"
    return f"not a SAM adapter (a {type(obj).__name__})"


def _check_layout(data: dict, path: Path) -> None:
    def bad(problem: str) -> ValueError:
        return ValueError(f"{path}: damaged SAM adapter ({ADAPTER_FORMAT}): {problem}")

    base, lora, state = data.get("base"), data.get("lora"), data.get("state")
    if not isinstance(base, Mapping) or not all(isinstance(base.get(k), str)
                                                for k in ("model_type", "checkpoint_sha256")):
        raise bad(f"'base' must hold model_type and checkpoint_sha256, found {base!r}")
    lora_ok = (
        isinstance(lora, Mapping)
        and isinstance(lora.get("rank"), int) and lora["rank"] >= 1
        and isinstance(lora.get("alpha"), (int, float)) and lora["alpha"] > 0
        and isinstance(lora.get("modules"), list) and lora["modules"]
        and all(isinstance(m, str) for m in lora["modules"])
    )
    if not lora_ok:
        found = {k: v for k, v in lora.items() if k != "modules"} if isinstance(lora, Mapping) else lora
        raise bad(f"'lora' must hold rank (int >= 1), alpha (> 0) and a non-empty list of module names, "
                  f"found {found!r}")
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise bad("'state' must map names to tensors")
    if not isinstance(data.get("extra", {}), Mapping):
        raise bad("'extra' must be a dict")
    lora_keys = {f"{m}.{p}" for m in lora["modules"] for p in LORA_PARAMETERS}
    missing = sorted(lora_keys - state.keys())
    if missing:
        raise bad(f"LoRA tensors missing from 'state' (first: {missing[:3]})")
    foreign = sorted(k for k in state if k not in lora_keys and not k.startswith(TRAINED_PREFIXES))
    if foreign:
        raise bad(f"'state' holds tensors an adapter does not carry (first: {foreign[:3]})")
    rank = lora["rank"]
    for module in lora["modules"]:
        shapes = [tuple(state[f"{module}.{p}"].shape) for p in LORA_PARAMETERS]
        (qa, qb, va, vb) = shapes
        if not (len(qa) == 2 and qa[0] == rank and qa == va and qb == vb == (qa[1], rank)):
            raise bad(f"LoRA tensors of {module} have shapes {shapes}, which do not fit rank {rank}")


def _read(path: str | os.PathLike) -> tuple[dict, str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SAM adapter not found: {path.resolve()}")
    # read once: the sha256 recorded for the model is that of the bytes actually loaded
    raw = path.read_bytes()
    try:
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for truncated or non-torch files
        raise CheckpointError(path, f"cannot be read as a SAM adapter: the file {load_problem(err)}") from err
    if not isinstance(data, Mapping) or data.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path}: {_describe(data)}")
    data = dict(data)
    _check_layout(data, path)
    return data, hashlib.sha256(raw).hexdigest()


def read_adapter(path: str | os.PathLike) -> dict:
    """Read and check an adapter file (``torch.load`` with ``weights_only=True``, on the CPU).

    Returns:
        the file's dict (``format``, ``base``, ``lora``, ``state``, ``extra``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, not a torch file, not an adapter (e.g. a SAM checkpoint), of another format
            version, or its entries do not fit together (the message names the file and what it found).
    """
    return _read(path)[0]


def adapter_header(path: str | os.PathLike) -> dict:
    """Everything in an adapter file but its tensors: ``format``, ``base``, ``lora``, ``extra`` (for cards and logs).

    Raises:
        FileNotFoundError, ValueError: as :func:`read_adapter`.
    """
    data = read_adapter(path)
    return {k: v for k, v in data.items() if k != "state"}


def _unwrap(sam: nn.Module) -> None:
    # undo apply_lora without merging (a load that failed half way)
    for name, module in lora_modules(sam).items():
        parent_name, _, child = name.rpartition(".")
        parent = sam.get_submodule(parent_name) if parent_name else sam
        for p, flag in zip(module.base.parameters(), module.base_requires_grad):
            p.requires_grad_(flag)
        setattr(parent, child, module.base)


def load_adapter(sam: nn.Module, path: str | os.PathLike, merge: bool = False) -> nn.Module:
    """Apply an adapter file to the SAM it was trained on, in place.

    Args:
        sam: the base model, loaded from the checkpoint the adapter names (:func:`bundle.sam.load_sam`), without LoRA.
        path: the adapter file (:func:`save_adapter`).
        merge: fold the LoRA updates into the encoder's weights (:func:`bundle.sam.lora.merge_lora`; inference);
            ``False`` keeps them as trainable modules (to continue training).

    Returns:
        ``sam``, its ``sam_info.adapter`` / ``adapter_sha256`` set to the file and its sha256.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_adapter`.
        ValueError: the model is not the adapter's base (another type or checkpoint sha256; the message names the
            adapter, the expected base and the loaded one), already carries LoRA or an adapter, or a tensor of the
            adapter has no counterpart of the same shape in the model. The model is left as it was.
    """
    data, sha = _read(path)
    path = Path(path).expanduser()
    info = getattr(sam, "sam_info", None)
    loaded = _base_of(sam, f"load the adapter {path}")
    expected = {k: data["base"][k] for k in loaded}
    if loaded != expected:
        raise ValueError(
            f"{path}: adapter for SAM {expected['model_type']} with base checkpoint sha256 "
            f"{expected['checkpoint_sha256']}, but the model is SAM {loaded['model_type']} with checkpoint sha256 "
            f"{loaded['checkpoint_sha256'] or 'none (random weights)'}; load the base checkpoint it was trained on"
        )
    if has_lora(sam) or getattr(info, "adapter_sha256", None):
        raise ValueError(f"cannot load the adapter {path}: the SAM model already carries LoRA or an adapter "
                         f"({getattr(info, 'adapter', None) or 'applied in this process'}); start from the base model")
    lora = data["lora"]
    names = apply_lora(sam, rank=lora["rank"], alpha=lora["alpha"])
    try:
        if names != list(lora["modules"]):
            differ = sorted(set(names) ^ set(lora["modules"]))
            raise ValueError(f"{path}: the adapter's LoRA modules differ from the model's attention blocks "
                             f"(first differences: {differ[:3]})")
        model_state = sam.state_dict()
        unknown = [k for k in data["state"] if k not in model_state]
        mismatched = [f"{k} {tuple(v.shape)} vs {tuple(model_state[k].shape)}" for k, v in data["state"].items()
                      if k in model_state and v.shape != model_state[k].shape]
        if unknown or mismatched:
            raise ValueError(f"{path}: adapter tensors do not fit SAM {loaded['model_type']} (first unknown: "
                             f"{unknown[:3]}, first shape differences: {mismatched[:3]})")
        sam.load_state_dict(data["state"], strict=False)
    except Exception:
        _unwrap(sam)
        raise
    if merge:
        merge_lora(sam)
    if info is not None:
        info.adapter, info.adapter_sha256 = str(path), sha
    return sam
