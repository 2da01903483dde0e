"""One SAMAug training iteration, as the ``iteration_update`` of MONAI's ``SupervisedTrainer``.

docs/methods.md §2, ``train_mode``:

- ``aug_only``: loss on ``M(x_aug)``.
- ``blend``: ``beta * L(M(x), y) + lam * L(M(x_aug), y)``, one optimizer step.
- ``alternate``: two optimizer steps per batch, first on the raw input ``x``, then on ``x_aug`` (what the released
  polyp script did).

``x`` is the raw input in the layout of ``prior_mode`` (:func:`bundle.workflows.segmentation.inputs.raw_network_input`),
so the same network sees both. With ``prior_mode="none"`` there is no prior and ``aug_only`` is plain supervised
training on the image; ``blend`` / ``alternate`` would only repeat the same input and are rejected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys, look_up_option

from bundle.workflows.segmentation.inputs import PRIOR_MODES, build_network_input, raw_network_input

__all__ = ["TRAIN_MODES", "SamAugTrainStep"]

TRAIN_MODES = ("aug_only", "blend", "alternate")


class SamAugTrainStep:
    """SAMAug training iteration for ``SupervisedTrainer(iteration_update=...)``.

    It replaces ``SupervisedTrainer._iteration``: reads ``image``, ``label`` and the prior from the batch
    dictionary (the trainer's ``prepare_batch`` is not used), moves them to ``engine.state.device``, runs
    ``engine.inferer(input, engine.network)``, ``engine.loss_function`` and ``engine.optimizer`` with the trainer's
    ``amp`` / ``scaler`` / ``amp_kwargs`` / ``optim_set_to_none`` / ``accumulation_steps`` settings, and fires the
    events the standard iteration fires, so MONAI handlers keep working:

    - ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``: once per optimizer step (twice per batch in
      ``alternate``, so e.g. gradient clipping on ``BACKWARD_COMPLETED`` still runs before each step); during the
      raw step of ``alternate`` the output holds the raw input, prediction and loss.
    - ``MODEL_COMPLETED``: once per batch, at the end (the trainer decollates the output on it).
    - ``INNER_ITERATION_STARTED`` / ``INNER_ITERATION_COMPLETED``: around each of the two steps of ``alternate``.

    Args:
        prior_mode: one of ``"add"``, ``"channels"``, ``"concat"``, ``"none"``.
        train_mode: one of :data:`TRAIN_MODES`.
        beta: weight of the raw-input loss in ``blend``.
        lam: weight of the augmented-input loss in ``blend``.
        prior_key: batch key of the ``[B, 2, *spatial]`` prior.
        prior_scale: the segmentation prior is divided by it.
        image_key: batch key of the image.
        label_key: batch key of the label.

    Returns (from ``__call__``):
        dict with ``image`` (the augmented network input), ``label``, ``pred`` (prediction on the augmented
        input), ``loss`` (the optimised loss; the mean of both steps in ``alternate``), and in ``blend`` /
        ``alternate`` also ``loss_raw`` and ``loss_aug`` (unweighted, detached).

    Raises:
        ValueError: unknown modes, negative weights, or ``blend`` / ``alternate`` with ``prior_mode="none"``.
    """

    def __init__(
        self,
        prior_mode: str,
        train_mode: str = "aug_only",
        beta: float = 1.0,
        lam: float = 1.0,
        prior_key: str = "image_prior",
        prior_scale: float = 1.0,
        image_key: str = CommonKeys.IMAGE,
        label_key: str = CommonKeys.LABEL,
    ) -> None:
        self.prior_mode = look_up_option(prior_mode, PRIOR_MODES)
        self.train_mode = look_up_option(train_mode, TRAIN_MODES)
        if self.prior_mode == "none" and self.train_mode != "aug_only":
            raise ValueError(
                f"train_mode={self.train_mode!r} mixes raw and prior-augmented inputs, but prior_mode='none' has no "
                "prior: both inputs would be the same image. Use train_mode='aug_only' (plain training) with "
                "prior_mode='none', or choose a prior_mode."
            )
        if beta < 0 or lam < 0:
            raise ValueError(f"beta and lam must be >= 0, got beta={beta}, lam={lam}.")
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be > 0, got {prior_scale}.")
        self.beta = float(beta)
        self.lam = float(lam)
        self.prior_key = prior_key
        self.prior_scale = float(prior_scale)
        self.image_key = image_key
        self.label_key = label_key

    def _prepare(self, engine: Any, batchdata: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if not isinstance(batchdata, Mapping):
            raise TypeError(
                f"SamAugTrainStep expects a dictionary batch with {self.image_key!r}, {self.label_key!r} and "
                f"{self.prior_key!r}, got {type(batchdata).__name__}."
            )
        keys = [self.image_key, self.label_key] + ([] if self.prior_mode == "none" else [self.prior_key])
        missing = [k for k in keys if k not in batchdata]
        if missing:
            raise KeyError(
                f"batch lacks {missing} (has {sorted(batchdata)}); prior_mode={self.prior_mode!r} needs {keys}."
            )
        to_kwargs = getattr(engine, "to_kwargs", None) or {}

        def _to(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device=engine.state.device, non_blocking=engine.non_blocking, **to_kwargs)
            # torch.compile cannot trace MetaTensor (pytorch issue 117026, as in SupervisedTrainer)
            return x.as_tensor() if getattr(engine, "compile", False) and isinstance(x, MetaTensor) else x

        image, label = _to(batchdata[self.image_key]), _to(batchdata[self.label_key])
        prior = None if self.prior_mode == "none" else _to(batchdata[self.prior_key])
        return image, label, prior

    @staticmethod
    def _accumulation(engine: Any) -> tuple[int, bool, bool]:
        """Same gating as ``SupervisedTrainer``: zero the gradients at the first and step at the last micro-batch."""
        acc = int(getattr(engine, "accumulation_steps", 1) or 1)
        if acc <= 1:
            return 1, True, True
        epoch_length = engine.state.epoch_length
        local_iter = engine.state.iteration - 1
        if epoch_length is not None:
            local_iter %= epoch_length
            last = (local_iter + 1) == epoch_length
        else:
            last = False
        return acc, local_iter % acc == 0, (local_iter + 1) % acc == 0 or last

    def _optimise(
        self,
        engine: Any,
        terms: list[tuple[float, torch.Tensor]],
        label: torch.Tensor,
        acc: int,
        zero_grad: bool,
        step: bool,
    ) -> list[torch.Tensor]:
        """Forward every ``(weight, input)`` term, back-propagate the weighted loss sum and optionally step.

        The output's ``image`` / ``pred`` are those of the last term. Returns the unweighted loss of each term.
        """
        use_scaler = bool(engine.amp) and engine.scaler is not None
        autocast = (
            torch.autocast(label.device.type, **engine.amp_kwargs) if use_scaler else contextlib.nullcontext()
        )
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        losses = []
        with autocast:
            for _, inputs in terms:
                engine.state.output[CommonKeys.IMAGE] = inputs
                engine.state.output[CommonKeys.PRED] = engine.inferer(inputs, engine.network)
                losses.append(engine.loss_function(engine.state.output[CommonKeys.PRED], label).mean())
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = sum(w * term_loss for (w, _), term_loss in zip(terms, losses))
            engine.state.output[CommonKeys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss = engine.state.output[CommonKeys.LOSS]
        scaled = loss / acc if acc > 1 else loss
        (engine.scaler.scale(scaled) if use_scaler else scaled).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if step:
            if use_scaler:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()
        return [term_loss.detach() for term_loss in losses]

    def _inner_step(self, engine: Any, inputs: torch.Tensor, label: torch.Tensor) -> list[torch.Tensor]:
        """One of the two optimizer steps of ``alternate``, framed by the INNER_ITERATION events."""
        engine.fire_event(IterationEvents.INNER_ITERATION_STARTED)
        losses = self._optimise(engine, [(1.0, inputs)], label, 1, True, True)
        engine.fire_event(IterationEvents.INNER_ITERATION_COMPLETED)
        return losses

    def __call__(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> dict:
        """Run one iteration on ``batchdata``; see the class docstring for the returned dictionary."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label, prior = self._prepare(engine, batchdata)
        x_aug = build_network_input(image, prior, self.prior_mode, self.prior_scale)
        engine.state.output = {CommonKeys.IMAGE: x_aug, CommonKeys.LABEL: label}
        engine.network.train()
        acc, zero_grad, step = self._accumulation(engine)

        if self.train_mode == "aug_only":
            self._optimise(engine, [(1.0, x_aug)], label, acc, zero_grad, step)
        else:
            x_raw = raw_network_input(image, self.prior_mode, prior.shape[1])
            if self.train_mode == "blend":
                loss_raw, loss_aug = self._optimise(
                    engine, [(self.beta, x_raw), (self.lam, x_aug)], label, acc, zero_grad, step
                )
            else:
                if acc > 1:
                    raise ValueError(
                        "train_mode='alternate' makes two optimizer steps per batch and cannot accumulate gradients; "
                        f"set the trainer's accumulation_steps to 1 (got {acc})."
                    )
                (loss_raw,) = self._inner_step(engine, x_raw, label)
                (loss_aug,) = self._inner_step(engine, x_aug, label)
                # reported loss of the batch: mean of the two optimised losses (there is no single objective)
                engine.state.output[CommonKeys.LOSS] = (loss_raw + loss_aug) / 2
            engine.state.output["loss_raw"] = loss_raw
            engine.state.output["loss_aug"] = loss_aug
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
