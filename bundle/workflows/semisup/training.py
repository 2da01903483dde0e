"""SAM-Mix training (METHODS.md §4) and its two baselines, with MONAI's ``SupervisedTrainer``, which
``configs/train_sam_mix.json`` builds (``train#trainer``) from the parts of a :class:`TrainingRun`.

One iteration of SAM-Mix (:class:`JointStep`):

- a batch of training slices (all of them, labelled or not) -> classifier -> ``CE(class)``;
- a batch of the ``N`` labelled slices (cycled: with N = 5 every iteration sees them) -> the classifier's Grad-CAM
  (eval mode, detached) -> CAM mask and box; the box prompt is the CAM box (``train_prompts cam``, the paper's
  figure: what SAM is prompted with at test time) or the ground-truth box (``train_prompts gt``, ADA-SAM's code, the
  authors' closest public code) -> SAM with the CAM mask added to its embedding -> ``Dice(mask)``;
- loss ``CE + seg_weight * Dice`` (0.5), one Adam step (lr 1e-4) over the classifier, the LoRA adapters, SAM's
  prompt encoder and mask decoder.

An epoch is one pass over the training slices. The baselines reuse the loop:

- ``zero_shot``: the classifier alone (no segmentation term); SAM is used as published with the CAM boxes;
- ``unet``: a MONAI 2D U-Net trained with Dice on the ``N`` labelled slices alone, for as many iterations (and
  labelled batches) as SAM-Mix gets.

Every epoch ends with an atomic checkpoint (trainable weights, optimizer, trainer state) that a rerun with the same
card resumes from. After the last epoch the classifier's batch-norm statistics are recomputed over the training
slices (:mod:`bundle.workflows.common.batch_norm`); the finished model is ``model.pt`` (classifier or U-Net + card)
and, for SAM-Mix, the adapter file ``adapter.pt`` (:mod:`bundle.sam.adapter`), which records the base checkpoint's
sha256.

Under ``torchrun`` (``configs/multi_gpu_train.json``) every rank trains on its share of the training slices
(:func:`bundle.workflows.common.ddp.train_sampler`) and draws its own labelled batches. The steps call the network's
``prompts`` / ``segment`` methods, which ``DistributedDataParallel``'s hooks do not see, so the steps average the
gradients themselves (:func:`bundle.workflows.common.ddp.average_gradients`) and, as DDP does, give every rank rank
0's buffers (batch-norm statistics) before each step: every rank holds the same weights throughout, which
:class:`TrainingRun` checks at the end (:func:`trained_digest`). Rank 0 alone writes checkpoints and the finished
files; the other ranks wait for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Mapping

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import IterationEvents
from monai.handlers import StatsHandler, TensorBoardStatsHandler
from monai.inferers import SimpleInferer
from monai.losses import DiceLoss
from monai.utils import CommonKeys

from bundle import distributed
from bundle.data.slice_dataset import CLASS_LABEL_KEY
from bundle.hashing import file_sha256
from bundle.sam.adapter import adapter_state_dict, save_adapter
from bundle.sam.cam_prompts import mask_boxes
from bundle.sam.engine import resolve_autocast
from bundle.workflows.common import ddp, options
from bundle.workflows.common.batch_norm import recompute_batch_norm
from bundle.workflows.common.checkpoints import EpochCheckpointSaver, ResumeFromCheckpoint, save_atomic
from bundle.workflows.common.guards import StopOnNonFiniteLoss
from bundle.workflows.common.model_card import CARD_NAME, write_card
from bundle.workflows.common.run_settings import SETTINGS_KEY, check_config_trainer, plan_training, without_max_epochs

__all__ = ["CHECKPOINT_NAME", "GAIN_KEY", "METHODS", "TRAIN_PROMPTS", "JointStep", "LabelledBatches",
           "SamTrainableState", "TrainingRun", "TrainingSettings", "UNetStep", "train_prompts_option", "trained_digest",
           "training_card", "training_plan", "upgrade_card"]

logger = logging.getLogger(__name__)

METHODS = options.SAM_MIX_METHODS  # recorded in model cards: the names live in common/options.py
#: the key of model.pt holding the sha256 of the adapter.pt written with it (SAM-Mix)
ADAPTER_KEY = "adapter_sha256"
CHECKPOINT_NAME = "sam_mix_last.pt"
GAIN_KEY = "guidance_gain"
"""Where ``model.pt`` (and the resume checkpoint's SAM entry) keep the dense-guidance gain of the trained SAM."""
"""What a run trains: SAM-Mix, the classifier of the zero-shot baseline, or the U-Net baseline."""
TRAIN_PROMPTS = ("cam", "gt")
"""The box prompt of the labelled slices in training: the CAM box (the paper's figure, and what the ``fair`` protocol
and inference prompt with) or the ground-truth box (ADA-SAM's code)."""


def train_prompts_option(value) -> str:
    """``train_prompts`` checked: one of :data:`TRAIN_PROMPTS`.

    Raises:
        ValueError: any other value, in one line naming the option.
    """
    if not isinstance(value, str) or value not in TRAIN_PROMPTS:
        raise ValueError(f"train_prompts: {value!r} is not one of {list(TRAIN_PROMPTS)}")
    return value


def upgrade_card(card: Mapping) -> dict:
    """A card as this version writes it: ``training.gt_boxes`` (cards before ``train_prompts``) read as
    ``train_prompts`` (true: ``gt``, false: ``cam``). The classifier of a card without ``output_stride`` is rebuilt as
    MONAI builds it (:class:`~bundle.networks.sam_mix.SamMixNet`), as it was trained."""
    card = dict(card)
    training = dict(card.get("training") or {})
    if "gt_boxes" in training and "train_prompts" not in training:
        training["train_prompts"] = "gt" if training.pop("gt_boxes") else "cam"
        card["training"] = training
    return card


class LabelledBatches:
    """Batches of the labelled slices, reshuffled (seeded per epoch) whenever they run out.

    ``rank`` (the process's rank under ``torchrun``; 0 in one process) shifts the seed, so every rank draws its own
    batches, and a resumed run of any rank draws the same batches as an uninterrupted one.
    """

    _RANK_STRIDE = 1_000_003  # seed distance between ranks (rank 0: the single-process draws)

    def __init__(self, dataset, batch_size: int, seed: int = 0, num_workers: int = 0, rank: int = 0) -> None:
        self.dataset, self.batch_size = dataset, max(1, min(int(batch_size), len(dataset)))
        self.seed, self.num_workers, self.rank = int(seed), int(num_workers), int(rank)
        self._epoch, self._draws, self._iter = 0, 0, None

    def start_epoch(self, epoch: int) -> None:
        """Restart the draw for an epoch: a resumed run draws the same batches as an uninterrupted one."""
        self._epoch, self._draws, self._iter = int(epoch), 0, None

    def __next__(self) -> dict:
        while True:
            if self._iter is None:
                generator = torch.Generator().manual_seed(self.seed * 100_003 + self._epoch * 1_009 + self._draws
                                                          + self.rank * self._RANK_STRIDE)
                self._draws += 1
                self._iter = iter(DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True,
                                             generator=generator, num_workers=self.num_workers))
            try:
                return next(self._iter)
            except StopIteration:
                self._iter = None


def _scalar(key: str) -> Callable[[Mapping], float]:
    """Output transform of the loss handlers: one entry of the step's output dictionary as a float."""
    return lambda output: float(output[key])


def _to(batch: Mapping, key: str, device) -> torch.Tensor:
    return batch[key].to(device=device).float()


class _Step:
    """Mixed precision shared by the steps: ``autocast`` as :func:`bundle.sam.engine.resolve_autocast` reads it
    (float32 on the CPU; bf16, or fp16 with a gradient scaler, on CUDA), and the ranks kept in step under
    ``torchrun``: :meth:`begin` shares rank 0's buffers, :meth:`update` averages the gradients before the optimizer
    step (scaled gradients with fp16: a rank's overflow reaches every rank, so all skip the same steps)."""

    def __init__(self, autocast: str = "none", device="cpu") -> None:
        self.dtype = resolve_autocast(autocast, torch.device(device))
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    @staticmethod
    def begin(engine) -> None:
        """Start a step: train mode, rank 0's buffers (under ``torchrun``), no gradients."""
        engine.network.train()
        ddp.broadcast_from_rank_zero(engine.network.buffers())
        engine.optimizer.zero_grad(set_to_none=True)

    def update(self, engine, loss: torch.Tensor) -> None:
        """Backward, gradients averaged over the ranks, optimizer step. ``LOSS_COMPLETED`` fires first, with the loss
        in ``engine.state.output``, as ``SupervisedTrainer`` does: :class:`StopOnNonFiniteLoss` stops a NaN or
        infinite loss before it reaches the weights."""
        engine.state.output = {CommonKeys.LOSS: loss}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self.scaler.scale(loss).backward()
        ddp.average_gradients(p for group in engine.optimizer.param_groups for p in group["params"])
        self.scaler.step(engine.optimizer)
        self.scaler.update()


class JointStep(_Step):
    """``iteration_update`` of the SAM-Mix trainer (and, with ``labelled=None``, of the classifier alone)."""

    def __init__(self, labelled: LabelledBatches | None, seg_weight: float = 0.5, train_prompts: str = "cam",
                 autocast: str = "none", device="cpu") -> None:
        super().__init__(autocast, device)
        self.labelled, self.seg_weight = labelled, float(seg_weight)
        self.train_prompts = train_prompts_option(train_prompts)
        self.ce = torch.nn.CrossEntropyLoss()
        self.dice = DiceLoss(sigmoid=True)

    def __call__(self, engine, batch: Mapping) -> dict:
        net, device = engine.network, engine.state.device
        self.begin(engine)
        x = _to(batch, "image", device)
        with self.autocast(device):
            logits = net(x)
        cls_loss = self.ce(logits.float(), batch[CLASS_LABEL_KEY].to(device).long())
        loss, seg_loss = cls_loss, torch.zeros((), device=device)
        if self.labelled is not None:
            sample = next(self.labelled)
            xl, ml = _to(sample, "image", device), _to(sample, "label", device)
            _, cam_box, cam_mask, _ = net.prompts(xl)  # float32: the CAM threshold decides the box
            boxes = mask_boxes(ml > 0.5)[0] if self.train_prompts == "gt" else cam_box
            with self.autocast(device):
                seg_logits = net.segment(xl, boxes, cam_mask)
            seg_loss = self.dice(seg_logits.float(), ml)
            loss = cls_loss + self.seg_weight * seg_loss
        self.update(engine, loss)
        return {"loss": loss.detach(), "cls_loss": cls_loss.detach(), "seg_loss": seg_loss.detach()}


class UNetStep(_Step):
    """``iteration_update`` of the U-Net baseline: Dice on a batch of the labelled slices."""

    def __init__(self, labelled: LabelledBatches, autocast: str = "none", device="cpu") -> None:
        super().__init__(autocast, device)
        self.labelled = labelled
        self.dice = DiceLoss(sigmoid=True)

    def __call__(self, engine, batch: Mapping) -> dict:
        net, device = engine.network, engine.state.device
        self.begin(engine)
        sample = next(self.labelled)
        with self.autocast(device):
            logits = net(_to(sample, "image", device))
        loss = self.dice(logits.float(), _to(sample, "label", device))
        self.update(engine, loss)
        return {"loss": loss.detach(), "seg_loss": loss.detach()}


class SamTrainableState:
    """Checkpoint entry of a SAM being tuned: only what training changes (adapters, prompt encoder, mask decoder, the
    dense-guidance gain)."""

    def __init__(self, trainable: torch.nn.Module) -> None:
        self.trainable = trainable

    def state_dict(self) -> dict:
        state = {k: v.detach().clone() for k, v in adapter_state_dict(self.trainable.sam).items()}
        state[GAIN_KEY] = self.trainable.guidance_gain.detach().clone()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        state = dict(state)
        with torch.no_grad():
            self.trainable.guidance_gain.copy_(state.pop(GAIN_KEY))
        own = self.trainable.sam.state_dict()
        unknown = [k for k in state if k not in own]
        if unknown:
            raise KeyError(f"checkpoint has SAM weights this model lacks: {unknown[:3]}")
        self.trainable.sam.load_state_dict(state, strict=False)


BATCH_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
"""State-dict suffixes of batch-norm statistics: recomputed by rank 0 after training, so not part of
:func:`trained_digest`."""


def trained_digest(model: Mapping, adapter_state: Mapping | None = None) -> str:
    """sha256 of the trained weights of a finished model, read from what its files hold.

    Args:
        model: the content of ``model.pt`` (``network`` state dict, ``guidance_gain`` for the SAM methods).
        adapter_state: the ``state`` of ``adapter.pt`` (SAM-Mix), else None.

    Every rank of a ``torchrun`` job reports the digest of the weights it ends with (:meth:`TrainingRun.run`); the ranks
    agree with each other and with the digest of the files rank 0 writes. Batch-norm statistics are left out
    (:data:`BATCH_NORM_STATISTICS`).
    """
    tensors = {f"network.{k}": v for k, v in model["network"].items() if not k.endswith(BATCH_NORM_STATISTICS)}
    if GAIN_KEY in model:
        tensors[GAIN_KEY] = model[GAIN_KEY]
    tensors.update({f"adapter.{k}": v for k, v in (adapter_state or {}).items()})
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensors[name].shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _finished_model(method: str, network: torch.nn.Module, card: Mapping) -> dict:
    """What ``model.pt`` holds: the U-Net, or the classifier and SAM's guidance gain; with the card."""
    if method == "unet":
        return {"network": network.state_dict(), "card": card}
    return {"network": network.classifier.state_dict(), GAIN_KEY: network.sam.guidance_gain.detach().cpu(),
            "card": card}


def _train_loader(train_data, batch_size: int, seed: int, num_workers: int, sampler=None) -> DataLoader:
    """The loader of the training slices: shuffled with a seeded generator, or ``sampler``'s share of them (one rank
    under ``torchrun``); the last batch is dropped when it would hold a single slice (batch norm needs 2)."""
    size = len(sampler) if sampler is not None else len(train_data)
    drop_last = size > batch_size and size % batch_size == 1
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(train_data, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, generator=generator,
                      drop_last=drop_last, num_workers=num_workers)


def _save_finished(method: str, network: torch.nn.Module, card: Mapping, model_dir, loader, device,
                   run: Mapping | None = None) -> None:
    """Recompute the classifier's batch-norm statistics over ``loader``, then write ``adapter.pt`` (SAM-Mix),
    ``model.pt`` (with ``run``: its run settings and epochs trained) and the model card (rank 0 alone)."""
    if method != "unet":  # the classifier's eval-mode statistics, from its final weights (common/batch_norm.py)
        recompute_batch_norm(network.classifier, loader, device)
    os.makedirs(model_dir, exist_ok=True)
    bound = {}
    if method == "sam_mix":
        adapter_path = os.path.join(os.fspath(model_dir), "adapter.pt")
        save_adapter(network.sam.sam, adapter_path, extra={"card": card})
        # model.pt, written after the adapter, records its sha256: a kill between the two writes is refused
        bound = {ADAPTER_KEY: file_sha256(adapter_path)}
    model_path = os.path.join(os.fspath(model_dir), "model.pt")
    save_atomic({**_finished_model(method, network, card), **dict(run or {}), **bound}, model_path)
    # the card batch inference reads (bundle/workflows/common/model_card.py); model.pt keeps its own copy
    # (after model.pt: the card records its sha256, so a kill between the two writes is refused, not run)
    write_card(os.path.join(os.fspath(model_dir), CARD_NAME), {"kind": "sam_mix", **card}, model_path)
    logger.info("sam-mix: saved %s", model_path)


def _rank_record(method: str, network: torch.nn.Module, card: Mapping, trainer, loader) -> dict:
    """What this rank did (its slices per epoch, the iterations run) and the digest of the weights it holds."""
    adapter = adapter_state_dict(network.sam.sam) if method == "sam_mix" else None
    return {"rank": distributed.rank(), "slices_per_epoch": len(loader.sampler),
            "iterations": int(trainer.state.iteration), "epoch_length": int(trainer.state.epoch_length),
            "sha256": trained_digest(_finished_model(method, network, card), adapter)}


def training_card(card: Mapping, method: str, max_epochs: int = 10, batch_size: int = 16, seg_batch_size: int = 4,
                  learning_rate: float = 1e-4, seg_weight: float = 0.5, train_prompts: str = "cam",
                  autocast: str = "auto", device="cpu", seed: int = 0) -> dict:
    """The model's card: ``card`` with the method and the training settings (and, under ``torchrun``, the number of
    processes: it changes the effective batch size)."""
    training = {"max_epochs": int(max_epochs), "batch_size": int(batch_size), "seg_batch_size": int(seg_batch_size),
                "learning_rate": float(learning_rate), "seg_weight": float(seg_weight),
                "train_prompts": train_prompts_option(train_prompts), "optimizer": "Adam", "seed": int(seed),
                "autocast": str(resolve_autocast(autocast, torch.device(device)) or "float32").replace("torch.", "")}
    if ddp.is_distributed():
        training["processes"] = distributed.world_size()
    return {**dict(card), "method": method, "training": training}


def training_plan(card: Mapping, output_dir: str | os.PathLike, model_dir: str | os.PathLike,
                  data_settings: Mapping | None = None, resume: bool = True) -> tuple[str, Mapping | None, dict]:
    """``(plan, stored model, run settings)`` of the model of ``card`` (:func:`training_card`): ``reuse`` the finished
    model, ``resume`` its epoch checkpoint or train ``fresh``
    (:func:`~bundle.workflows.common.run_settings.plan_training`). The run settings are the card without
    ``max_epochs``, plus ``data_settings`` (the datalist digest). A model or checkpoint made with other settings
    raises a :class:`~bundle.errors.RunSettingsError` unless ``resume`` is False."""
    settings = {**dict(data_settings or {}), **without_max_epochs(card)}
    extra = [os.path.join(os.fspath(model_dir), "adapter.pt")] if card["method"] == "sam_mix" else []
    plan, stored = plan_training(os.path.join(os.fspath(model_dir), "model.pt"),
                                 os.path.join(os.fspath(output_dir), CHECKPOINT_NAME), settings, resume,
                                 card["training"]["max_epochs"], what="sam-mix", model_files=extra)
    return plan, stored, settings


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How a model of :data:`METHODS` trains (``sam_mix#training`` of ``configs/train_sam_mix.json``); all recorded in
    the card (:func:`training_card`).

    Attributes:
        max_epochs: passes over the training slices.
        batch_size: training slices per iteration (the classifier's batch).
        seg_batch_size: labelled slices per iteration (the segmentation's batch; cycled).
        learning_rate: Adam's.
        seg_weight: weight of the segmentation Dice against the classification loss.
        train_prompts: the box prompt of the labelled slices: ``cam`` (the CAM box) or ``gt`` (the ground-truth box).
        autocast: mixed precision (``auto``: bf16 or fp16 on CUDA, float32 on the CPU; ``none``, ``bf16``, ``fp16``).
    """

    max_epochs: int = 10
    batch_size: int = 16
    seg_batch_size: int = 4
    learning_rate: float = 1e-4
    seg_weight: float = 0.5
    train_prompts: str = "cam"
    autocast: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size", "seg_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} is not a whole number of 1 or more")
        train_prompts_option(self.train_prompts)


class TrainingRun:
    """One training of a model of :data:`METHODS`: the parts MONAI's ``SupervisedTrainer`` is built from
    (``train#trainer`` of ``configs/train_sam_mix.json``: :attr:`network`, :attr:`optimizer`, :attr:`loader`,
    :attr:`step` as its ``iteration_update``, :attr:`handlers`), and what happens around the trainer's run
    (:meth:`run`).

    Building it reads nothing and trains nothing: it makes the card (:func:`training_card`) and the plan
    (:func:`training_plan`: reuse the finished model, resume its checkpoint, or train fresh; other settings are
    refused here, before the data are loaded), seeds torch with ``seed`` and puts the network on ``device`` with rank
    0's initial weights.

    Under ``torchrun`` every rank builds and runs one: each trains on its share of ``train_data`` with averaged
    gradients (the module docstring says why the steps average them rather than ``DistributedDataParallel``); rank 0
    alone writes the checkpoints and the finished files (batch-norm statistics recomputed over all of
    ``train_data``), which the other ranks wait for.

    Args:
        method: ``sam_mix``, ``zero_shot`` or ``unet``.
        network: a :class:`~bundle.networks.sam_mix.SamMixNet` (``sam_mix``, ``zero_shot``) or a U-Net.
        train_data: every training slice (image, organ mask, class label); a
            :class:`~bundle.data.deferred_cache.DeferredCacheDataset` underneath is filled when :meth:`run` starts.
        labelled_data: the ``N`` labelled slices.
        output_dir: folder of the resume checkpoint (``sam_mix_last.pt``).
        model_dir: where ``model.pt`` (and ``adapter.pt``) are written.
        card: what the model is; the training settings are added (:func:`training_card`).
        settings: :class:`TrainingSettings`.
        data_settings: what the model trains on that the card does not say (the datalist digest).
        resume: False trains afresh, replacing what ``output_dir`` and ``model_dir`` hold.
        seed: seeds the initial weights, the shuffling and the labelled batches. With several processes the number of
            processes is recorded in the card too (it changes the effective batch size).
        summary_writer: TensorBoard losses; ``epoch_callback``: called with the trainer after every epoch (panels).
    """

    def __init__(self, method: str, network: torch.nn.Module, train_data, labelled_data,
                 output_dir: str | os.PathLike, model_dir: str | os.PathLike, card: Mapping,
                 settings: TrainingSettings, device="cpu", seed: int = 0, num_workers: int = 0, summary_writer=None,
                 epoch_callback: Callable | None = None, data_settings: Mapping | None = None,
                 resume: bool = True) -> None:
        self.method, self.settings, self.seed = method, settings, int(seed)
        self.train_data, self.num_workers = train_data, int(num_workers)
        self.output_dir, self.model_dir = output_dir, model_dir
        self.device = torch.device(device)
        self.card = training_card(card, method, device=device, seed=seed, **dataclasses.asdict(settings))
        self.plan, self.stored, self.run_settings = training_plan(self.card, output_dir, model_dir, data_settings,
                                                                  resume)
        self.epoch_callback = epoch_callback
        torch.manual_seed(self.seed)
        self.network = network.to(self.device)
        ddp.broadcast_from_rank_zero([*(p for p in self.network.parameters() if p.requires_grad),
                                      *self.network.buffers()])
        self.labelled = (LabelledBatches(labelled_data, settings.seg_batch_size, seed, num_workers,
                                         rank=distributed.rank()) if method != "zero_shot" else None)
        if method == "unet":
            self.step, save_dict = UNetStep(self.labelled, settings.autocast, device), {"network": self.network}
        else:
            self.step = JointStep(self.labelled, settings.seg_weight, settings.train_prompts, settings.autocast,
                                  device)
            save_dict = {"classifier": self.network.classifier, "sam": SamTrainableState(self.network.sam)}
        self.optimizer = torch.optim.Adam([p for p in self.network.parameters() if p.requires_grad],
                                          lr=settings.learning_rate)
        save_dict["optimizer"] = self.optimizer
        # one process: every slice, shuffled; several: this rank's share (the trainer sets the sampler's epoch)
        self.loader = _train_loader(train_data, settings.batch_size, seed, num_workers,
                                    ddp.train_sampler(train_data, seed=seed))
        self.handlers = self._handlers(save_dict, summary_writer)

    def _handlers(self, save_dict: dict, summary_writer) -> list:
        handlers = [
            StopOnNonFiniteLoss(),
            StatsHandler(tag_name="loss", output_transform=_scalar("loss"), iteration_log=False),
            EpochCheckpointSaver(self.output_dir, save_dict, filename=CHECKPOINT_NAME, engine_key="trainer",
                                 info={"stage": "sam_mix", "card": self.card, SETTINGS_KEY: self.run_settings}),
        ]
        if self.plan == "resume":
            handlers.insert(0, ResumeFromCheckpoint(os.path.join(os.fspath(self.output_dir), CHECKPOINT_NAME),
                                                    save_dict, map_location=self.device, engine_key="trainer",
                                                    settings=self.run_settings))
        if summary_writer is not None:
            for key in ("loss", "seg_loss") if self.method == "unet" else ("loss", "cls_loss", "seg_loss"):
                handlers.append(TensorBoardStatsHandler(summary_writer, tag_name=f"train/{key}",
                                                        output_transform=_scalar(key)))
        return handlers

    def check_trainer(self, trainer, dataset=None) -> None:
        """The trainer is built from this run's parts and for its epochs, and ``dataset`` (the config's
        ``train#dataset``, when given) is the run's slices: an override of ``train#...`` alone would train something
        the card does not say, or be ignored."""
        parts = {"network": self.network, "optimizer": self.optimizer, "data_loader": self.loader,
                 "_process_function": self.step}
        check_config_trainer(trainer, parts, self.settings.max_epochs, self.train_data, dataset,
                             "@sam_mix.training_run (configs/train_sam_mix.json)")
        if type(trainer.inferer) is not SimpleInferer:
            raise ValueError(f"train#inferer: {type(trainer.inferer).__name__} would not be used: the SAM-Mix steps "
                             "call the network themselves (leave train#inferer a SimpleInferer)")

    def run(self, trainer, dataset=None) -> dict:
        """Train with ``trainer`` (or reuse the finished model, rewriting its card), then save the finished files
        (``dataset``: the config's ``train#dataset``, checked by :meth:`check_trainer`).

        Returns:
            ``{"card": the model's card, "ranks": [per rank: rank, slices_per_epoch, iterations, epoch_length,
            sha256 (:func:`trained_digest` of the weights it ends with)]}``; ``ranks`` is None when a finished model
            was reused.
        """
        self.check_trainer(trainer, dataset)  # a reused model too: it was trained for the card's max_epochs
        model_path = os.path.join(os.fspath(self.model_dir), "model.pt")
        if self.plan == "reuse":
            card = dict(self.stored["card"])
            if distributed.is_main_process():  # rewritten from model.pt's own card: a card missing, unbound or stale
                write_card(os.path.join(os.fspath(self.model_dir), CARD_NAME), {"kind": "sam_mix", **card},
                           model_path)
            distributed.barrier()
            return {"card": card, "ranks": None}
        for data in (self.train_data, getattr(self.labelled, "dataset", None)):
            fill = getattr(data, "fill", None)
            if fill is not None:
                fill()  # the volumes, loaded once here (not when the config was built)
        if self.labelled is not None:
            trainer.add_event_handler(Events.EPOCH_STARTED,
                                      lambda engine: self.labelled.start_epoch(engine.state.epoch))
        if self.epoch_callback is not None:
            trainer.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_callback)
        trainer.run()
        ranks = distributed.gather_objects(_rank_record(self.method, self.network, self.card, trainer, self.loader))
        if len({r["sha256"] for r in ranks}) > 1:
            logger.warning("sam-mix: the ranks ended with different weights (%s); rank 0's are saved",
                           ", ".join(f"rank {r['rank']}: {r['sha256'][:12]}" for r in ranks))
        if distributed.is_main_process():  # batch-norm statistics over every slice, as in one process
            full = (_train_loader(self.train_data, self.settings.batch_size, self.seed, self.num_workers)
                    if ddp.is_distributed() else self.loader)
            _save_finished(self.method, self.network, self.card, self.model_dir, full, self.device,
                           run={SETTINGS_KEY: self.run_settings, "epochs": int(trainer.state.epoch)})
        distributed.barrier()  # the finished files exist for every rank from here on
        return {"card": self.card, "ranks": ranks}
