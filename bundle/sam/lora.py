"""Low-rank adaptation (LoRA) of a SAM image encoder: trainable updates of the query and value projections.

Fine-tuning SAM's whole image encoder on a few hundred annotated slices over-fits and costs a full copy of the
encoder per task. LoRA instead freezes every encoder weight and learns, for the fused ``qkv`` projection of each
attention block, two rank-``r`` updates: ``q += scale * B_q A_q x`` and ``v += scale * B_v A_v x`` (the keys stay as
they are, the usual choice for ViTs). ``A`` starts like a ``Linear`` and ``B`` at zero, so a fresh adapter leaves the
model's outputs exactly unchanged; ``scale = alpha / rank``.

Both encoder kinds fuse q, k and v into one ``nn.Linear(dim, 3 * dim)`` but order its output rows differently:
segment-anything's ``Attention`` (ViT-B/L/H, MedSAM, ``tiny``/``small``) lays them out ``[all q | all k | all v]``,
LiteMedSAM's :class:`~bundle.sam.tiny_vit.WindowAttention` groups them per head, ``[q_h | k_h | v_h]`` for each head
``h``. :func:`qv_rows` gives the q and v rows of either, and :class:`LoRAQKV` adds its updates to exactly those rows,
so the attention modules' own ``forward`` runs unchanged on the wrapped projection.

:func:`merge_lora` folds the updates into the ``qkv`` weights for inference (no extra cost per call, and the model
is a plain SAM again); :func:`mark_trainable` selects what a fine-tuning run trains (LoRA, prompt encoder, mask
decoder). Adapter files are written and read by :mod:`bundle.sam.adapter`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bundle.sam.torchvision_compat import import_segment_anything

__all__ = [
    "LoRAQKV",
    "LORA_PARAMETERS",
    "TRAINED_PREFIXES",
    "apply_lora",
    "has_lora",
    "lora_config",
    "lora_modules",
    "lora_state_dict",
    "mark_trainable",
    "merge_lora",
    "qv_rows",
]

#: the LoRA parameters of one wrapped projection, as they appear after the module's name in a state dict
LORA_PARAMETERS = ("lora_q_a.weight", "lora_q_b.weight", "lora_v_a.weight", "lora_v_b.weight")
#: the parts of SAM trained (and saved in adapters) in full, next to the encoder's LoRA updates
TRAINED_PREFIXES = ("prompt_encoder.", "mask_decoder.")


class LoRAQKV(nn.Module):
    """A fused, frozen ``qkv`` projection plus rank-``r`` updates of its query and value rows.

    ``forward(x) = base(x)`` with ``scale * B_q(A_q(x))`` added to the rows ``q_rows`` of the output and
    ``scale * B_v(A_v(x))`` to the rows ``v_rows``; the key rows are the base's. Parameters: ``lora_q_a`` /
    ``lora_v_a`` (``[rank, dim]``, initialised like a ``Linear``), ``lora_q_b`` / ``lora_v_b`` (``[dim, rank]``,
    zeros), so a fresh wrapper computes exactly what the base does.

    Args:
        base: the fused projection, ``nn.Linear(dim, 3 * dim)``; its parameters are frozen (``requires_grad=False``)
            and kept as the child ``base``.
        q_rows: output rows of ``base`` that are queries (``dim`` indices; see :func:`qv_rows`).
        v_rows: output rows that are values.
        rank: rank ``r`` of each update.
        alpha: scaling numerator, ``scale = alpha / rank``; ``None`` means ``alpha = rank`` (scale 1).

    Raises:
        ValueError: ``base`` is not a Linear with ``3 * in_features`` outputs, the rows are not ``dim`` distinct
            indices inside its output, or ``rank`` / ``alpha`` is not positive.
    """

    def __init__(self, base: nn.Linear, q_rows: torch.Tensor, v_rows: torch.Tensor, rank: int = 8,
                 alpha: float | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear) or base.out_features != 3 * base.in_features:
            raise ValueError(f"LoRAQKV wraps a fused nn.Linear(dim, 3 * dim), got {base!r}")
        rank = int(rank)
        alpha = float(rank if alpha is None else alpha)
        if rank < 1 or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"LoRA rank must be >= 1 and alpha > 0, got rank={rank}, alpha={alpha}")
        dim = base.in_features
        rows = torch.cat([torch.as_tensor(q_rows), torch.as_tensor(v_rows)]).long().flatten()
        if (rows.numel() != 2 * dim or rows.unique().numel() != rows.numel()
                or int(rows.min()) < 0 or int(rows.max()) >= base.out_features):
            raise ValueError(f"q_rows and v_rows must be {dim} distinct rows each in [0, {base.out_features})")
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.base_requires_grad = [p.requires_grad for p in base.parameters()]
        base.requires_grad_(False)
        self.base = base
        weight = base.weight
        kw = {"device": weight.device, "dtype": weight.dtype}
        self.lora_q_a = nn.Linear(dim, rank, bias=False, **kw)  # default init: kaiming uniform, as a Linear
        self.lora_q_b = nn.Linear(rank, dim, bias=False, **kw)
        self.lora_v_a = nn.Linear(dim, rank, bias=False, **kw)
        self.lora_v_b = nn.Linear(rank, dim, bias=False, **kw)
        nn.init.zeros_(self.lora_q_b.weight)
        nn.init.zeros_(self.lora_v_b.weight)
        # not persistent: the layout follows from the attention class, only the learned tensors are saved
        self.register_buffer("rows", rows.to(weight.device), persistent=False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def q_rows(self) -> torch.Tensor:
        return self.rows[: self.in_features]

    @property
    def v_rows(self) -> torch.Tensor:
        return self.rows[self.in_features :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` -> ``[..., 3 * dim]``, the base's output with the q and v updates added."""
        out = self.base(x)
        delta = torch.cat([self.lora_q_b(self.lora_q_a(x)), self.lora_v_b(self.lora_v_a(x))], dim=-1)
        # out of place, so autograd sees the base output and the update as two inputs of one op
        return out.index_add(out.dim() - 1, self.rows, delta.to(out.dtype), alpha=self.scale)

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """The base ``Linear`` with the updates folded into its weight (in place, computed in float64)."""
        weight = self.base.weight
        merged = weight.double()
        for b, a, rows in ((self.lora_q_b, self.lora_q_a, self.q_rows), (self.lora_v_b, self.lora_v_a, self.v_rows)):
            merged[rows] += self.scale * (b.weight.double() @ a.weight.double())
        weight.copy_(merged.to(weight.dtype))
        for p, flag in zip(self.base.parameters(), self.base_requires_grad):
            p.requires_grad_(flag)
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def _attention_classes() -> tuple[type, type]:
    import_segment_anything()
    from segment_anything.modeling.image_encoder import Attention

    from bundle.sam.tiny_vit import WindowAttention

    return Attention, WindowAttention


def _base_linear(module: nn.Module) -> nn.Linear:
    qkv = module.qkv
    return qkv.base if isinstance(qkv, LoRAQKV) else qkv


def qv_rows(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The output rows of ``module.qkv`` that are queries and values, in the order the attention reads them.

    Args:
        module: a segment-anything ``Attention`` (rows ``[all q | all k | all v]``) or a
            :class:`~bundle.sam.tiny_vit.WindowAttention` (rows ``[q_h | k_h | v_h]`` per head ``h``).

    Returns:
        ``(q_index, v_index)``, ``dim`` int64 row indices each, in channel order (head-major).

    Raises:
        ValueError: ``module`` is of another class.
    """
    attention, window_attention = _attention_classes()
    if not isinstance(module, (attention, window_attention)):
        raise ValueError(
            f"LoRA rows are known for segment_anything Attention and bundle.sam.tiny_vit.WindowAttention only, "
            f"got {type(module).__module__}.{type(module).__qualname__}"
        )
    dim = _base_linear(module).in_features
    if isinstance(module, attention):
        return torch.arange(0, dim), torch.arange(2 * dim, 3 * dim)
    heads = module.num_heads
    head_dim = dim // heads
    # head h owns rows [3 * h * head_dim, 3 * (h + 1) * head_dim): q, then k, then v, head_dim each
    start = (torch.arange(heads) * 3 * head_dim)[:, None] + torch.arange(head_dim)[None, :]
    return start.flatten(), (start + 2 * head_dim).flatten()


def _attention_modules(sam: nn.Module) -> list[tuple[str, nn.Module]]:
    encoder = getattr(sam, "image_encoder", None)
    if encoder is None:
        raise ValueError(f"not a SAM model (no image_encoder): {type(sam).__name__}")
    classes = _attention_classes()
    return [(f"image_encoder.{name}", m) for name, m in encoder.named_modules() if isinstance(m, classes)]


def lora_modules(sam: nn.Module) -> dict[str, LoRAQKV]:
    """The LoRA-wrapped projections of ``sam``'s image encoder, by module name (``image_encoder.blocks.0.attn.qkv``)."""
    return {name: m for name, m in sam.named_modules() if isinstance(m, LoRAQKV)}


def has_lora(sam: nn.Module) -> bool:
    """Whether any projection of ``sam`` carries a (not merged) LoRA update."""
    return any(isinstance(m, LoRAQKV) for m in sam.modules())


def lora_config(sam: nn.Module) -> dict:
    """``{"rank", "alpha", "modules"}`` of the LoRA on ``sam`` (as recorded in adapter files).

    Raises:
        ValueError: ``sam`` has no LoRA, or its projections use different ranks or alphas.
    """
    modules = lora_modules(sam)
    if not modules:
        raise ValueError("the SAM model has no LoRA: apply_lora(sam) first")
    settings = {(m.rank, m.alpha) for m in modules.values()}
    if len(settings) != 1:
        raise ValueError(f"the SAM model's LoRA projections differ in (rank, alpha): {sorted(settings)}")
    ((rank, alpha),) = settings
    return {"rank": rank, "alpha": alpha, "modules": list(modules)}


def apply_lora(sam: nn.Module, rank: int = 8, alpha: float | None = None) -> list[str]:
    """Wrap the ``qkv`` projection of every attention block of ``sam.image_encoder`` in a :class:`LoRAQKV`, in place.

    The new parameters live on the device and dtype of each projection. Nothing else changes: the encoder's other
    weights keep their ``requires_grad`` (see :func:`mark_trainable`), and the outputs stay the same until the
    ``B`` matrices are trained.

    Args:
        sam: a ``segment_anything.modeling.Sam`` (any model type of :mod:`bundle.sam.loading`).
        rank: rank of the updates.
        alpha: scaling numerator (``scale = alpha / rank``); ``None``: ``alpha = rank``.

    Returns:
        the names of the wrapped projections (``image_encoder.blocks.0.attn.qkv``, ...), in module order.

    Raises:
        ValueError: ``sam`` already carries LoRA, has no attention block in its image encoder, or ``rank`` /
            ``alpha`` is not positive.
    """
    attentions = _attention_modules(sam)
    if not attentions:
        raise ValueError(f"no attention block found in the image encoder of {type(sam).__name__}: nothing to adapt")
    done = [f"{name}.qkv" for name, m in attentions if isinstance(m.qkv, LoRAQKV)]
    if done:
        raise ValueError(f"the SAM model already carries LoRA (e.g. {done[0]}): apply_lora was called twice; "
                         "merge_lora it first or start from a fresh model")
    names = []
    for name, module in attentions:
        module.qkv = LoRAQKV(module.qkv, *qv_rows(module), rank=rank, alpha=alpha)
        names.append(f"{name}.qkv")
    return names


def lora_state_dict(sam: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``sam`` only, keyed as in ``sam.state_dict()`` (``...attn.qkv.lora_q_a.weight``, ...)."""
    keys = {f"{name}.{p}" for name in lora_modules(sam) for p in LORA_PARAMETERS}
    return {k: v for k, v in sam.state_dict().items() if k in keys}


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


def merge_lora(sam: nn.Module) -> nn.Module:
    """Fold every LoRA update into its ``qkv`` weight and put the plain ``Linear`` back, in place.

    ``W[q_rows] += scale * B_q @ A_q`` and ``W[v_rows] += scale * B_v @ A_v``, computed in float64 and cast to the
    weight's dtype, so merged outputs differ from unmerged ones by rounding only. The base parameters get back the
    ``requires_grad`` they had before :func:`apply_lora`. A model without LoRA is returned unchanged.

    Returns:
        ``sam``.
    """
    for name, module in lora_modules(sam).items():
        parent, child = _parent(sam, name)
        setattr(parent, child, module.merged_linear())
    return sam


def mark_trainable(sam: nn.Module) -> list[str]:
    """Make exactly the LoRA parameters, the prompt encoder and the mask decoder trainable; freeze the rest.

    Only ``requires_grad`` changes (BatchNorm statistics of a TinyViT encoder still update in train mode: keep the
    image encoder in eval mode while fine-tuning).

    Returns:
        the names of the trainable parameters, as in ``sam.named_parameters()``.
    """
    lora = {f"{name}.{p}" for name in lora_modules(sam) for p in LORA_PARAMETERS}
    trainable = []
    for name, param in sam.named_parameters():
        train = name in lora or name.startswith(TRAINED_PREFIXES)
        param.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable
