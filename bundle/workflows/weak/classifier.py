"""WeakMedSAM stage 3: the parent/child slice classifier, trained with MONAI's ``SupervisedTrainer`` on slice labels;
``configs/train_weak.json`` builds the trainer (``train#trainer``) from the parts of a :class:`ClassifierRun`.

The samples are axial slices of the training volumes (image only: the datalist's segmentation path is dropped from
the items, :func:`bundle.workflows.weak.slices.weak_slice_items`) with the target ``[parent | child]`` of
:mod:`bundle.workflows.weak.slices`: for the ``resnet`` classifier the slices resized to ``roi_size``, for the SAM
ones their cached SAM embeddings or SAM-window slices (:mod:`bundle.workflows.weak.embedding_slices`; the kinds:
:data:`CLASSIFIERS`). Optimisation follows METHODS.md §5: AdamW (lr 1e-4, weight decay 0.01, the trainable
parameters only) with a OneCycle schedule stepped every iteration, ``BCE(parent) + 0.5 * BCE(child)``.

Every epoch ends with an atomic checkpoint (network, optimizer, scheduler, trainer state) that a rerun resumes from;
the finished model is written to ``model_path`` with the model card the pseudo-label stage rebuilds it from. Both
record the run settings (:func:`classifier_settings`, :mod:`bundle.workflows.common.run_settings`): a finished model
with the same settings is reused without training (or trained on from its checkpoint when ``max_epochs`` grew, the
OneCycle schedule stretched to the new length), and a model or checkpoint made with other settings is refused before
any work unless ``resume`` is False.

Under ``torchrun`` each rank trains ``DistributedDataParallel`` on its share of every epoch's slices
(:func:`bundle.workflows.common.ddp.train_sampler`); rank 0 alone writes the checkpoints and the model (the plain
network's weights, which load without DDP) and computes the validation AUC on the whole validation split, which it
hands to the other ranks, so every rank logs and returns the same card. Every rank returns once the model is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.handlers import LrScheduleHandler, StatsHandler, TensorBoardStatsHandler, from_engine

from bundle.checkpoint_files import load_checkpoint
from bundle.errors import InputError
from bundle.data.slice_dataset import AxialSliceDataset, cached_slices
from bundle.networks.fusion import mean_roc_auc
from bundle.networks.embedding_classifier import EmbeddingClassifier
from bundle.networks.parent_child import ParentChildClassifier, ParentChildHeads, ParentChildLoss
from bundle.networks.sam_encoder_classifier import SamEncoderClassifier
from bundle.workflows.common import ddp
from bundle.workflows.common.checkpoints import EpochCheckpointSaver, ResumeFromCheckpoint, save_atomic
from bundle.workflows.common.card_schema import validate_card
from bundle.workflows.common.guards import StopOnNonFiniteLoss
from bundle.workflows.common.handlers import LearningRateLogger
from bundle.workflows.common.run_settings import SETTINGS_KEY, check_config_trainer, plan_training, without_max_epochs
from bundle.workflows.weak.ranks import on_main
from bundle.workflows.weak.slices import TARGET_KEY

__all__ = ["CHECKPOINT_NAME", "CLASSIFIERS", "ClassifierRun", "ClassifierSettings", "TargetBatch", "build_classifier",
           "classifier_card", "classifier_plan", "classifier_settings", "load_classifier", "parent_probabilities",
           "slice_dataset"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "classifier_last.pt"
CLASSIFIERS = ("sam_frozen", "sam_lora", "resnet")
"""The classifier kinds (``network["kind"]`` of the card; a card without it is a ``resnet``): ``sam_frozen``, heads on
the cached SAM image embeddings (:class:`~bundle.networks.embedding_classifier.EmbeddingClassifier`); ``sam_lora``, the
SAM image encoder itself tuned with LoRA, whose embedding also gives ``M`` (the paper's design,
:class:`~bundle.networks.sam_encoder_classifier.SamEncoderClassifier`); ``resnet``, a MONAI backbone trained from
scratch on the slices (:class:`~bundle.networks.parent_child.ParentChildClassifier`)."""
_NOT_SETTINGS = ("validation", "subclasses")  # results, and the sub-class record (its inputs are in the settings)


def slice_dataset(entries: Sequence[Mapping], items: Sequence[Mapping], volume_transform, item_transform=None,
                  cache_rate: float = 1.0, num_workers: int = 0) -> AxialSliceDataset:  # the resnet classifier
    """Slices of the entries' image volumes (loaded once, cached, when the classifier trains) with each item's
    ``target`` (the items get them with ``set_items`` when the sub-class stage has run)."""
    return cached_slices(entries, items, volume_transform, item_transform, keys="image", label_key=TARGET_KEY,
                         cache_rate=cache_rate, num_workers=num_workers, deferred=True)


class TargetBatch:
    """``prepare_batch`` of the trainer: ``(image, target)`` on the device."""

    def __call__(self, batch: Mapping, device=None, non_blocking: bool = False, **kwargs):
        return (batch["image"].to(device=device, non_blocking=non_blocking).float(),
                batch[TARGET_KEY].to(device=device, non_blocking=non_blocking).float())


@torch.no_grad()
def parent_probabilities(network: torch.nn.Module, loader, device) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities [N, C], parent targets [N, C])`` of every sample of ``loader`` (eval mode, restored after)."""
    was_training = network.training
    network.eval()
    probs, targets = [], []
    try:
        for batch in loader:
            parent, _ = network(batch["image"].to(device).float())
            probs.append(torch.sigmoid(parent).cpu())
            targets.append(batch[TARGET_KEY][:, : parent.shape[1]])
    finally:
        network.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def build_classifier(network_args: Mapping, sam: torch.nn.Module | None = None) -> ParentChildHeads:
    """The untrained classifier of a card's ``network`` arguments (its ``kind``, :data:`CLASSIFIERS`).

    Args:
        sam: ``sam_lora`` only: the loaded SAM whose image encoder starts the classifier (it is adapted in place:
            pass a copy); None builds the architecture untrained, for loading a trained classifier's weights.
    """
    args = dict(network_args)
    kind = args.pop("kind", "resnet")
    if kind == "sam_frozen":
        return EmbeddingClassifier(**args)
    if kind == "sam_lora":
        return SamEncoderClassifier(**args, sam=sam)
    if kind == "resnet":
        return ParentChildClassifier(**args)
    raise ValueError(f"classifier kind {kind!r} is not one of {', '.join(CLASSIFIERS)}")


def load_classifier(path: str | os.PathLike, device="cpu") -> tuple[ParentChildHeads, dict]:
    """The trained classifier and its card from ``model_path`` (eval mode); the card is checked against its schema
    (:mod:`bundle.workflows.common.card_schema`) before the network is built from it.

    Raises:
        InputError: no card, or a card field that does not fit (names the file and the field).
    """
    stored = load_checkpoint(path, what="WeakMedSAM classifier")
    if not isinstance(stored, dict) or not isinstance(stored.get("card"), dict):
        raise InputError(path, "not a WeakMedSAM classifier file (no card); run the classifier stage again")
    card = validate_card(stored["card"], "weak_classifier", path)
    network = build_classifier(card["network"])
    network.load_state_dict(stored["network"])
    return network.to(device).eval(), card


def classifier_card(card: Mapping, network_args: Mapping, max_epochs: int = 10, batch_size: int = 16,
                    learning_rate: float = 1e-4, weight_decay: float = 0.01, child_weight: float = 0.5,
                    seed: int = 0) -> dict:
    """The classifier's card: ``card`` plus the network arguments and the training settings."""
    training = {"max_epochs": int(max_epochs), "batch_size": int(batch_size), "learning_rate": float(learning_rate),
                "weight_decay": float(weight_decay), "child_weight": float(child_weight), "seed": int(seed)}
    return {**dict(card), "network": dict(network_args), "training": training}


def classifier_settings(card: Mapping, data_settings: Mapping | None = None) -> dict:
    """The run settings of a classifier: its card without results, the sub-class record (whose inputs, the feature
    source and the datalist, are in ``data_settings``) and ``max_epochs``."""
    return {**dict(data_settings or {}),
            **without_max_epochs({k: v for k, v in card.items() if k not in _NOT_SETTINGS})}


def classifier_plan(output_dir: str | os.PathLike, model_path: str | os.PathLike, card: Mapping,
                    data_settings: Mapping | None = None, resume: bool = True) -> tuple[str, Mapping | None]:
    """``("reuse" | "resume" | "fresh", stored model)``: :func:`~bundle.workflows.common.run_settings.plan_training`
    of the classifier of ``card`` (:func:`classifier_card`); raises before any work when a model or checkpoint there
    was made with other settings."""
    return plan_training(model_path, os.path.join(os.fspath(output_dir), CHECKPOINT_NAME),
                         classifier_settings(card, data_settings), resume, card["training"]["max_epochs"],
                         what="classifier")


class _KeepScheduleLength:
    """After a resume, keep this run's OneCycle length: a run resumed with a larger ``max_epochs`` follows the
    stretched schedule from the iteration it reached (the checkpoint holds the old length, and stepping past it
    would fail)."""

    _LENGTH_KEYS = ("total_steps", "_schedule_phases")

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.configured = {k: v for k, v in scheduler.state_dict().items() if k in self._LENGTH_KEYS}

    def __call__(self, engine) -> None:
        state = self.scheduler.state_dict()
        if state.get("total_steps") != self.configured.get("total_steps"):
            logger.info("classifier: the OneCycle schedule goes on over %s iterations (was %s)",
                        self.configured.get("total_steps"), state.get("total_steps"))
            self.scheduler.load_state_dict({**state, **self.configured})


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """How the classifier trains (``classifier_training`` of ``configs/train_weak.json``; METHODS.md §5's defaults),
    all recorded in its card (:func:`classifier_card`).

    Attributes:
        max_epochs: passes over the training slices.
        batch_size: slices per iteration.
        learning_rate: AdamW's, and the OneCycle schedule's maximum.
        weight_decay: AdamW's.
        child_weight: weight of the child (sub-class) BCE against the parent BCE.
    """

    max_epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    child_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} is not a whole number of 1 or more")


class ClassifierRun:
    """One training of the classifier: the parts MONAI's ``SupervisedTrainer`` is built from (``train#trainer`` of
    ``configs/train_weak.json``: :attr:`network`, :attr:`optimizer`, :attr:`loader`, :attr:`loss`,
    :attr:`prepare_batch`, :attr:`handlers`), and what happens around the trainer's run (:meth:`run`).

    Building it trains nothing: it makes the card (:func:`classifier_card`) and the plan (:func:`classifier_plan`:
    reuse the finished model, resume its checkpoint, or train fresh; other settings are refused here), seeds torch
    with ``seed`` and builds the network (``DistributedDataParallel`` on several processes). The samples' targets
    come from the sub-class stage, so the datasets are built without them and :meth:`run` gives them their items with
    targets (``set_items``); a deferred volume cache is filled then too.

    Args:
        network_args: the classifier's arguments (:func:`build_classifier`).
        train_data, val_data: slice datasets (:func:`slice_dataset`, or
            :class:`~bundle.workflows.weak.embedding_slices.EmbeddingSlices` for ``sam_frozen``, ``WindowSlices`` for
            ``sam_lora``); validation may be None.
        output_dir: folder of the resume checkpoint (``classifier_last.pt``).
        model_path: the finished model (``{"network": state_dict, "card": card}``).
        card: what the model is (task, class names, K, channels, roi size, intensity, ...); the network arguments and
            the training settings are added to it (:func:`classifier_card`).
        settings: :class:`ClassifierSettings`.
        data_settings: what the run trains on that the card does not say (datalist digest, feature source); with the
            card they are the run settings (:func:`classifier_settings`).
        initial_sam: ``sam_lora``: returns the loaded SAM the encoder starts from (adapted in place: return a copy);
            called only when a classifier is to be trained, not when a finished one is reused.
        resume: False trains afresh, replacing a finished model or checkpoint made with other settings.
    """

    def __init__(self, network_args: Mapping, train_data, val_data, output_dir: str | os.PathLike,
                 model_path: str | os.PathLike, card: Mapping, settings: ClassifierSettings, device="cpu",
                 seed: int = 0, num_workers: int = 0, summary_writer=None, data_settings: Mapping | None = None,
                 resume: bool = True, initial_sam: Callable[[], torch.nn.Module] | None = None) -> None:
        self.settings, self.seed, self.num_workers = settings, int(seed), int(num_workers)
        self.train_data, self.val_data = train_data, val_data
        self.output_dir, self.model_path = os.fspath(output_dir), os.fspath(model_path)
        self.summary_writer = summary_writer
        self.card = classifier_card(card, network_args, seed=seed, **dataclasses.asdict(settings))
        self.run_settings = classifier_settings(self.card, data_settings)
        self.plan, self.stored = classifier_plan(output_dir, model_path, self.card, data_settings, resume)
        torch.manual_seed(self.seed)
        self.device = torch.device(device)
        sam = initial_sam() if initial_sam is not None and self.plan != "reuse" else None
        self.network = ddp.wrap_network(build_classifier(network_args, sam=sam), self.device)  # DDP: several ranks
        self.plain = ddp.unwrap(self.network)
        generator = torch.Generator().manual_seed(self.seed)
        sampler = ddp.train_sampler(train_data, seed=self.seed)  # None in one process: the loader shuffles
        samples = len(train_data) if sampler is None else len(sampler)  # this rank's samples per epoch
        batch_size = settings.batch_size
        drop_last = samples > batch_size and samples % batch_size == 1  # batch norm needs 2 samples
        self.loader = DataLoader(train_data, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                 generator=generator, drop_last=drop_last, num_workers=num_workers)
        trainable = [p for p in self.network.parameters() if p.requires_grad]  # sam_lora: LoRA, block and heads
        self.optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=settings.learning_rate, total_steps=max(1, settings.max_epochs * len(self.loader)))
        self.loss = ParentChildLoss(child_weight=settings.child_weight)
        self.prepare_batch = TargetBatch()
        self.handlers = self._handlers()

    def _handlers(self) -> list:
        save_dict = {"network": self.network, "optimizer": self.optimizer, "lr_scheduler": self.scheduler}
        handlers = [
            LrScheduleHandler(self.scheduler, epoch_level=False, print_lr=False),
            StopOnNonFiniteLoss(),
            StatsHandler(tag_name="classifier_loss", output_transform=from_engine(["loss"], first=True),
                         iteration_log=False),
            EpochCheckpointSaver(self.output_dir, save_dict, filename=CHECKPOINT_NAME, engine_key="trainer",
                                 info={"stage": "weak_classifier", "card": self.card,
                                       SETTINGS_KEY: self.run_settings}),
        ]
        if self.plan == "resume":
            handlers.insert(0, ResumeFromCheckpoint(os.path.join(self.output_dir, CHECKPOINT_NAME), save_dict,
                                                    map_location=self.device, engine_key="trainer",
                                                    settings=self.run_settings))
        if self.summary_writer is not None:
            handlers += [TensorBoardStatsHandler(self.summary_writer, tag_name="classifier/train_loss",
                                                 output_transform=from_engine(["loss"], first=True)),
                         LearningRateLogger(self.optimizer, self.summary_writer, tag="classifier/lr")]
        return handlers

    def check_trainer(self, trainer, dataset=None) -> None:
        """The trainer is built from this run's parts and for its epochs, and ``dataset`` (the config's
        ``train#dataset``, when given) is the run's slices: an override of ``train#...`` alone would train something
        the card does not say, or be ignored."""
        parts = {"network": self.network, "optimizer": self.optimizer, "data_loader": self.loader,
                 "loss_function": self.loss, "prepare_batch": self.prepare_batch}
        check_config_trainer(trainer, parts, self.settings.max_epochs, self.train_data, dataset,
                             "@weak.classifier_run (configs/train_weak.json)")

    def run(self, trainer, train_items: Sequence[Mapping], val_items: Sequence[Mapping] | None,
            subclasses: str) -> dict:
        """Train with ``trainer`` (or reuse the finished model); returns the card with the validation AUC.

        Args:
            train_items, val_items: the datasets' slice items with their targets
                (:func:`~bundle.workflows.weak.slices.with_targets`).
            subclasses: the signature of the sub-class record the targets come from (recorded in the card).
        """
        self.check_trainer(trainer)  # a reused classifier too: it was trained for the card's max_epochs
        if self.plan == "reuse":
            return dict(self.stored["card"])
        self.card["subclasses"] = subclasses
        for data, items in ((self.train_data, train_items), (self.val_data, val_items)):
            if data is not None:
                data.set_items(items)
                getattr(data, "fill", lambda: None)()  # the volumes, loaded once here (not when the config was built)
        trainer.add_event_handler(Events.STARTED, _KeepScheduleLength(self.scheduler))  # after the resume handler
        scores: dict = {}
        if self.val_data is not None and len(self.val_data):
            self._validate_every_epoch(trainer, scores)
        trainer.run()
        card = {**self.card, "validation": scores}
        finished = {"network": self.plain.state_dict(), "card": card, SETTINGS_KEY: self.run_settings,
                    "epochs": int(trainer.state.epoch)}
        on_main("classifier", lambda: save_atomic(finished, self.model_path))
        logger.info("classifier: saved %s", self.model_path)
        return card

    def _validate_every_epoch(self, trainer, scores: dict) -> None:
        val_loader = DataLoader(self.val_data, batch_size=self.settings.batch_size, shuffle=False,
                                num_workers=self.num_workers)

        def validation_auc() -> float:
            probs, targets = parent_probabilities(self.plain, val_loader, self.device)  # plain: no collective call
            try:
                return mean_roc_auc(torch.as_tensor(probs), torch.as_tensor(targets), multi_label=True)
            except ValueError:  # a validation split with one class only: the AUC is undefined
                return float("nan")

        @trainer.on(Events.EPOCH_COMPLETED)
        def _validate(engine):
            auc = on_main("classifier validation", validation_auc)  # rank 0's network, on every rank's log
            scores.update(val_parent_auc=auc, epoch=engine.state.epoch)
            engine.logger.info(f"classifier epoch {engine.state.epoch}: validation parent AUC {auc:.4f}")
            if self.summary_writer is not None and np.isfinite(auc):
                self.summary_writer.add_scalar("classifier/val_parent_auc", auc, engine.state.epoch)
