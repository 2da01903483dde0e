"""Build SAM models and load their checkpoints.

Official architectures (``vit_b``, ``vit_l``, ``vit_h``) come from segment-anything's own registry; small custom
configurations (smaller input, width and depth, used by tests and benchmarks) are assembled from the same
``segment_anything.modeling`` classes. Checkpoints are read with ``map_location`` and ``weights_only=True`` and checked
against the architecture before any weight is copied, so a wrong file fails with a message saying what it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Mapping

import torch

from bundle.sam.torchvision_compat import import_segment_anything

__all__ = ["SamConfig", "SamInfo", "SAM_CONFIGS", "load_sam", "build_sam", "infer_config", "file_sha256"]

logger = logging.getLogger(__name__)

OFFICIAL_CHECKPOINTS = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


@dataclass(frozen=True)
class SamConfig:
    """Architecture of a SAM model; the official sizes differ only in the image encoder."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16


SAM_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    # small models for tests and benchmarks: same classes, 256 input (16 x 16 embedding grid)
    "tiny": SamConfig(
        64, 2, 2, (1,), img_size=256, window_size=8, prompt_embed_dim=64, decoder_mlp_dim=256, iou_head_hidden_dim=64
    ),
    "small": SamConfig(
        192, 4, 4, (1, 3), img_size=512, window_size=8, prompt_embed_dim=128, decoder_mlp_dim=512, iou_head_hidden_dim=128
    ),
}
# MedSAM publishes a ViT-B in SAM's checkpoint format
SAM_CONFIGS["medsam_vit_b"] = SAM_CONFIGS["vit_b"]


@dataclass
class SamInfo:
    """What was loaded: recorded in prior-cache manifests so a changed model invalidates cached priors."""

    model_type: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    config: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks (official checkpoints are 0.4 - 2.5 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(partial(f.read, chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_config(model_type: str | SamConfig | Mapping) -> tuple[str, SamConfig]:
    if isinstance(model_type, SamConfig):
        return "custom", model_type
    if isinstance(model_type, Mapping):
        cfg = dict(model_type)
        cfg["encoder_global_attn_indexes"] = tuple(cfg.get("encoder_global_attn_indexes", ()))
        return "custom", SamConfig(**cfg)
    from monai.utils import look_up_option

    return model_type, look_up_option(model_type, SAM_CONFIGS)


def build_sam(model_type: str | SamConfig | Mapping = "vit_b") -> torch.nn.Module:
    """Build an untrained SAM of the given type (official registry for vit_b/l/h, modeling classes otherwise)."""
    sa = import_segment_anything()
    name, cfg = _resolve_config(model_type)
    if name in ("vit_b", "vit_l", "vit_h", "medsam_vit_b"):
        return sa.sam_model_registry[name.replace("medsam_", "")](checkpoint=None).eval()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = cfg.img_size // cfg.patch_size
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.encoder_embed_dim,
            depth=cfg.encoder_depth,
            num_heads=cfg.encoder_num_heads,
            mlp_ratio=4,
            out_chans=cfg.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=cfg.window_size,
            global_attn_indexes=cfg.encoder_global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    )
    return model.eval()


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Read the architecture a SAM state dict was saved from (encoder width, depth, input size, prompt width)."""
    try:
        patch = state_dict["image_encoder.patch_embed.proj.weight"]
        pos = state_dict["image_encoder.pos_embed"]
        prompt = state_dict["prompt_encoder.no_mask_embed.weight"]
    except KeyError as err:
        raise ValueError(f"not a SAM state dict: key {err.args[0]!r} is missing") from err
    blocks = {k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")}
    return {
        "encoder_embed_dim": int(patch.shape[0]),
        "encoder_depth": len(blocks),
        "img_size": int(pos.shape[1] * patch.shape[-1]),
        "prompt_embed_dim": int(prompt.shape[1]),
    }


def _name_for(found: dict) -> str:
    for name, cfg in SAM_CONFIGS.items():
        if (
            cfg.encoder_embed_dim == found["encoder_embed_dim"]
            and cfg.encoder_depth == found["encoder_depth"]
            and cfg.img_size == found["img_size"]
            and cfg.prompt_embed_dim == found["prompt_embed_dim"]
        ):
            return name
    return "a custom configuration " + ", ".join(f"{k}={v}" for k, v in found.items())


def _unwrap_state_dict(obj, path: Path) -> dict:
    # SAM and MedSAM release bare state dicts; fine-tuning scripts often wrap them
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "network"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a SAM checkpoint (expected a state dict of tensors, found {type(obj).__name__})")
    prefix = "module."
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in obj.items()}


def load_sam(
    model_type: str | SamConfig | Mapping = "vit_b",
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build a SAM model and load its weights.

    Args:
        model_type: ``vit_b``, ``vit_l``, ``vit_h``, ``medsam_vit_b`` (a ViT-B in SAM's format), ``tiny`` / ``small``
            (test and benchmark sizes), or a :class:`SamConfig` / mapping of its fields.
        checkpoint: a state-dict file in segment-anything's format; ``None`` leaves random weights.
        device: where the model lives.

    Returns:
        the ``segment_anything.modeling.Sam`` module in eval mode, with ``sam_info`` (:class:`SamInfo`) attached.

    Raises:
        FileNotFoundError: the checkpoint does not exist (the message says where it was looked for and how to get it).
        ValueError: the file is not a SAM state dict, or it belongs to another architecture (the message names it).
    """
    name, cfg = _resolve_config(model_type)
    path = None if checkpoint is None else Path(checkpoint).expanduser()
    # checked before building: a ViT-H takes tens of seconds and gigabytes to initialise
    if path is not None and not path.is_file():
        hint = OFFICIAL_CHECKPOINTS.get(name.replace("medsam_", ""), None)
        how = (
            f"download {hint} with `python -m monai.bundle download_large_files --meta_file configs/metadata.json` "
            "(see large_files.yml)"
            if hint and not name.startswith("medsam")
            else "see large_files.yml for the published checkpoints"
        )
        raise FileNotFoundError(f"SAM checkpoint not found: {path.resolve()} (model_type={name}); {how}")
    model = build_sam(cfg if name == "custom" else name)
    sha = None
    if path is not None:
        sha = file_sha256(path)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several unrelated types for corrupt or non-torch files
            raise ValueError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})") from err
        state = _unwrap_state_dict(raw, path)
        found = infer_config(state) if "image_encoder.patch_embed.proj.weight" in state else None
        expected = model.state_dict()
        mismatched = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
        missing = [k for k in expected if k not in state]
        if found is None or mismatched or missing:
            what = f"a SAM {_name_for(found)} checkpoint" if found else "not a SAM checkpoint"
            detail = (mismatched or missing)[:3]
            raise ValueError(
                f"{path}: {what}, which does not fit model_type={name} (first differing keys: {detail}); "
                "set model_type to the type the checkpoint was saved from"
            )
        unexpected = [k for k in state if k not in expected]
        if unexpected:  # e.g. adapters or extra tokens of a SAM variant: load_state_dict would not name the file
            raise ValueError(
                f"{path}: has keys that SAM {name} does not have (first: {unexpected[:3]}); "
                "merge or strip them into segment-anything's format first"
            )
        model.load_state_dict(state, strict=True)
        logger.info("loaded SAM %s from %s (sha256 %s)", name, path, sha[:12])
    model.to(device)
    model.sam_info = SamInfo(name, None if checkpoint is None else str(checkpoint), sha, asdict(cfg))
    return model
