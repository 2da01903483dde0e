"""Loss of the SAMAug-C dual-branch classifier: one classification loss per branch, summed (docs/methods.md §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

__all__ = ["REDUCTIONS", "DualBranchLoss", "check_branch_logits", "class_targets"]

REDUCTIONS = ("mean", "sum")


def check_branch_logits(logits: torch.Tensor) -> torch.Tensor:
    """Check that ``logits`` is ``[B, n_branches, K]`` (what :class:`~bundle.networks.DualBranchClassifier` returns).

    Raises:
        ValueError: for any other number of dimensions.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        shape = tuple(logits.shape) if hasattr(logits, "shape") else type(logits).__name__
        raise ValueError(f"logits must be [B, n_branches, num_classes], got {shape}.")
    return logits


def class_targets(target: torch.Tensor, batch: int, multi_label: bool, num_classes: int) -> torch.Tensor:
    """Targets in the form the loss and the metrics use.

    Args:
        target: single-label: integer class indices ``[B]`` (or ``[B, 1]``; integral floats are accepted);
            multi-label: ``[B, K]`` in ``{0, 1}`` (or soft labels in ``[0, 1]``).
        batch: ``B`` of the logits.
        multi_label: which form to expect.
        num_classes: ``K`` of the logits.

    Returns:
        ``[B]`` int64 class indices, or ``[B, K]`` float targets.

    Raises:
        ValueError: a shape that does not fit, non-integral or out-of-range class indices.
    """
    target = torch.as_tensor(target)
    if multi_label:
        if tuple(target.shape) != (batch, num_classes):
            raise ValueError(f"multi-label target must be [B, K] = [{batch}, {num_classes}], got {tuple(target.shape)}.")
        return target.float()
    if target.ndim == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (batch,):
        raise ValueError(
            f"single-label target must be class indices [B] = [{batch}] (or [B, 1]), got {tuple(target.shape)}; "
            "use multi_label=True for [B, K] targets."
        )
    if target.is_floating_point() and not torch.equal(target, target.round()):
        raise ValueError("single-label target must hold integer class indices, got non-integral values.")
    target = target.long()
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"class indices must be in [0, {num_classes - 1}], got {target.tolist()}.")
    return target


class DualBranchLoss(nn.Module):
    """Sum over branches of the classification loss of each branch: ``CE(A) + CE(B)``.

    Single-label: cross-entropy of each branch's logits against class indices; multi-label: binary cross-entropy
    with logits per class. Each branch's term is reduced over the batch (and classes) by ``reduction`` before the
    branch terms are added, so a single-branch network gets exactly its own loss.

    Args:
        multi_label: use BCE-with-logits on ``[B, K]`` targets instead of CE on class indices.
        reduction: ``"mean"`` or ``"sum"`` over the batch (and classes for multi-label) of each branch.

    Raises:
        ValueError: unknown ``reduction`` (naming the closest valid one).
    """

    def __init__(self, multi_label: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        self.multi_label = bool(multi_label)
        self.reduction = look_up_option(reduction, REDUCTIONS)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args:
            logits: ``[B, n_branches, K]``.
            target: class indices ``[B]`` (or ``[B, 1]``), or ``[B, K]`` for multi-label.

        Returns:
            the scalar loss (sum of ``n_branches`` terms).
        """
        logits = check_branch_logits(logits)
        target = class_targets(target, logits.shape[0], self.multi_label, logits.shape[2]).to(logits.device)
        if self.multi_label:
            target = target.to(logits.dtype)
            terms = [F.binary_cross_entropy_with_logits(logits[:, i], target, reduction=self.reduction)
                     for i in range(logits.shape[1])]
        else:
            terms = [F.cross_entropy(logits[:, i], target, reduction=self.reduction) for i in range(logits.shape[1])]
        return torch.stack(terms).sum()
