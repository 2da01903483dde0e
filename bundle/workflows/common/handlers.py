"""TensorBoard review shared by the task workflows: per-class metrics, learning rate, prior images, run notes.

All writers subclass MONAI's ``TensorBoardHandler`` (pass ``summary_writer`` to share one writer with
``TensorBoardStatsHandler``, or ``log_dir`` to create one). Nothing here knows a task: the image panels show the
image, its SAM prior channels and, when they have the image's spatial shape, the label and the prediction.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.handlers import TensorBoardHandler
from monai.utils import CommonKeys, IgniteInfo, min_version, optional_import

from bundle.priors.transforms import SAMAUG_KINDS

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "PerClassMetricLogger",
    "LearningRateLogger",
    "PriorImageLogger",
    "TextLogger",
    "per_class_means",
    "largest_label_slice",
    "to_unit_range",
]


def per_class_means(details: Any) -> torch.Tensor:
    """Per-class mean ``[C]`` of per-sample scores ``[N, C]``, ignoring NaN (class absent from a sample)."""
    scores = torch.as_tensor(details, dtype=torch.float32).detach().cpu()
    if scores.ndim == 1:
        scores = scores[:, None]
    return scores.reshape(scores.shape[0], -1).nanmean(dim=0)


def largest_label_slice(label: torch.Tensor | None, depth: int) -> int:
    """Index along the last axis of the slice with the largest foreground area of ``label`` ``[C, H, W, D]``.

    Foreground is ``label > 0`` for a single channel; for several channels it is any channel ``> 0``, leaving out
    channel 0 when the channels sum to one everywhere (one-hot with background). The middle slice without a label
    or without foreground.
    """
    if label is None:
        return depth // 2
    label = torch.as_tensor(label).detach().float()
    if label.shape[0] > 1 and bool((label.sum(dim=0) == 1).all()):
        label = label[1:]
    area = (label > 0).any(dim=0).flatten(0, -2).sum(dim=0)
    return int(area.argmax()) if area.max() > 0 else depth // 2


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """Min-max normalise a 2D image to ``[0, 1]`` (a constant image is clipped to ``[0, 1]`` instead)."""
    image = torch.nan_to_num(image.detach().float().cpu())
    low, high = image.min(), image.max()
    if high > low:
        return (image - low) / (high - low)
    return image.clamp(0, 1)


def _channel_names(prefix: str, n: int, names: Sequence[str] | None) -> list[str]:
    if names is not None and len(names) == n:
        return [str(x) for x in names]
    return [prefix] if n == 1 else [f"{prefix}{i}" for i in range(n)]


class PerClassMetricLogger:
    """Put the per-class means of a metric's per-sample details into ``engine.state.metrics``.

    At ``EPOCH_COMPLETED`` of the evaluator it reads ``engine.state.metric_details[metric_name]`` (``[N, C]``, kept by
    MONAI metric handlers with ``save_details=True``, e.g. ``MeanDice``) and writes
    ``engine.state.metrics[f"{metric_name}_{class_name}"]``, which ``TensorBoardStatsHandler`` / ``StatsHandler``
    then log. List it **before** those handlers (ignite calls handlers of one event in the order they were attached;
    metrics are attached by the engine itself, so they are computed first).

    Args:
        metric_name: name of the metric in ``key_val_metric`` / ``additional_metrics``.
        class_names: one name per metric channel (without background if the metric has
            ``include_background=False``); default ``0, 1, ...``.
    """

    def __init__(self, metric_name: str = "val_mean_dice", class_names: Sequence[str] | None = None) -> None:
        self.metric_name = metric_name
        self.class_names = None if class_names is None else [str(c) for c in class_names]

    def attach(self, engine: Engine) -> None:
        """Run at every ``EPOCH_COMPLETED`` of ``engine`` (the evaluator)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the per-class values."""
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            raise RuntimeError(
                f"engine.state.metric_details has no {self.metric_name!r}: attach the metric to this engine under that "
                "name with save_details=True."
            )
        means = per_class_means(details)
        names = self.class_names or [str(i) for i in range(means.numel())]
        if len(names) != means.numel():
            raise ValueError(
                f"{self.metric_name} has {means.numel()} classes per sample but {len(names)} class_names {names} were "
                "given (leave out the background when the metric has include_background=False)."
            )
        for name, value in zip(names, means.tolist()):
            engine.state.metrics[f"{self.metric_name}_{name}"] = value


class LearningRateLogger(TensorBoardHandler):
    """Log the learning rate of every parameter group at ``EPOCH_STARTED`` (the rate used in that epoch).

    Tag ``tag`` for one group, ``{tag}/group{i}`` for several; global step = trainer epoch.

    Args:
        optimizer: the trainer's optimizer.
        summary_writer: shared writer; default a new one in ``log_dir``.
        log_dir: folder of a new writer.
        tag: scalar tag.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, summary_writer: Any = None, log_dir: str = "./runs", tag: str = "lr"
    ) -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        self.optimizer = optimizer
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        """Run at every ``EPOCH_STARTED`` of ``engine`` (the trainer)."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the current learning rates."""
        groups = self.optimizer.param_groups
        for i, group in enumerate(groups):
            tag = self.tag if len(groups) == 1 else f"{self.tag}/group{i}"
            self._writer.add_scalar(tag, float(group["lr"]), engine.state.epoch)
        self._writer.flush()


def _samples(batch: Any, output: Any) -> list[tuple[Mapping, Mapping]]:
    """Per-sample ``(data, output)`` dictionaries from a decollated list or a batched dictionary."""
    if isinstance(batch, Mapping):
        n = next(len(v) for v in batch.values() if isinstance(v, torch.Tensor))
        batch = [{k: v[i] for k, v in batch.items() if isinstance(v, torch.Tensor)} for i in range(n)]
    if isinstance(output, Mapping):
        output = [{k: v[i] for k, v in output.items() if isinstance(v, torch.Tensor) and v.ndim > 0}
                  for i in range(len(batch))]
    if not isinstance(batch, Sequence) or not isinstance(output, Sequence):
        raise TypeError(f"expected dictionary batch/output, got {type(batch).__name__} / {type(output).__name__}.")
    return list(zip(batch, output))


class PriorImageLogger(TensorBoardHandler):
    """Write one axial slice of the first ``max_cases`` validation cases: image, priors, label and prediction.

    Attached to the evaluator (run by ``ValidationHandler`` inside the trainer). Cases are counted from the start of
    every evaluator run, so with an unshuffled validation loader the same cases appear every epoch. For 3D data the
    slice with the largest label area is chosen at the first run and reused. Tags ``{tag_prefix}/case{k}/{name}``
    (e.g. ``val/case0/sam_seg_prior``), images ``[1, H, W]`` min-max normalised, global step = trainer epoch
    (the evaluator's ``state.epoch``, which ``ValidationHandler`` sets to the trainer's; or ``epoch_getter``).
    Data come from ``engine.state.batch`` (image, prior, label) and ``engine.state.output`` (prediction), batched or
    decollated. Slices are shown as stored (no display reorientation).

    Args:
        summary_writer: shared writer; default a new one in ``log_dir``.
        log_dir: folder of a new writer.
        image_key: batch key of the image ``[C, *spatial]``.
        prior_key: batch key of the prior ``[K, *spatial]`` (skipped when absent).
        label_key: batch key of the label (each channel written); None leaves it out (e.g. a class vector, which
            is no image; a volume of another shape is skipped with a warning).
        pred_key: output key of the prediction (each channel written); None leaves it out, like ``label_key``.
        channel_names: names of the image channels (default ``image`` / ``image{i}``).
        prior_names: names of the prior channels (default SAMAug's two kinds; a prior with another number of
            channels is named ``{prior_key}{i}``).
        max_cases: number of cases to show.
        epoch_getter: ``callable(engine) -> int`` global step; default ``engine.state.epoch``.
        tag_prefix: first part of every tag.
    """

    def __init__(
        self,
        summary_writer: Any = None,
        log_dir: str = "./runs",
        image_key: str = CommonKeys.IMAGE,
        prior_key: str = "image_prior",
        label_key: str | None = CommonKeys.LABEL,
        pred_key: str | None = CommonKeys.PRED,
        channel_names: Sequence[str] | None = None,
        prior_names: Sequence[str] = SAMAUG_KINDS,
        max_cases: int = 2,
        epoch_getter: Callable[[Engine], int] | None = None,
        tag_prefix: str = "val",
    ) -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        self.image_key, self.prior_key, self.label_key, self.pred_key = image_key, prior_key, label_key, pred_key
        self.channel_names = channel_names
        self.prior_names = prior_names
        self.max_cases = int(max_cases)
        self.epoch_getter = epoch_getter
        self.tag_prefix = tag_prefix
        self.slices: dict[int, int] = {}
        self._case = 0

    def attach(self, engine: Engine) -> None:
        """Count cases from every ``EPOCH_STARTED``, write at ``ITERATION_COMPLETED``, flush at ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._writer.flush())

    def reset(self, engine: Engine | None = None) -> None:
        """Start counting cases again (each evaluator run)."""
        self._case = 0

    def __call__(self, engine: Engine) -> None:
        """Write the images of this iteration's cases while fewer than ``max_cases`` were written."""
        if self._case >= self.max_cases:
            return
        step = self.epoch_getter(engine) if self.epoch_getter is not None else engine.state.epoch
        for data, output in _samples(engine.state.batch, engine.state.output):
            if self._case >= self.max_cases:
                break
            self._write_case(self._case, data, output, int(step))
            self._case += 1

    def _write_case(self, case: int, data: Mapping, output: Mapping, step: int) -> None:
        if self.image_key not in data:
            raise KeyError(f"PriorImageLogger: the batch has no {self.image_key!r} (has {sorted(data)}).")
        image = data[self.image_key]
        spatial = tuple(image.shape[1:])
        label = data.get(self.label_key)
        volumes = [(self.image_key, image, self.channel_names)]
        if data.get(self.prior_key) is not None:
            volumes.append((self.prior_key, data[self.prior_key], self.prior_names))
        if label is not None:
            volumes.append(("label", label, None))
        if output.get(self.pred_key) is not None:
            volumes.append(("pred", output[self.pred_key], None))
        if len(spatial) == 3 and case not in self.slices:
            label_ok = label is not None and tuple(label.shape[1:]) == spatial
            self.slices[case] = largest_label_slice(label if label_ok else None, spatial[-1])
        for prefix, volume, names in volumes:
            if tuple(volume.shape[1:]) != spatial:
                warnings.warn(f"PriorImageLogger: {prefix} shape {tuple(volume.shape)} != image {spatial}, skipped.")
                continue
            volume = volume[..., self.slices[case]] if len(spatial) == 3 else volume
            for name, channel in zip(_channel_names(prefix, volume.shape[0], names), volume):
                tag = f"{self.tag_prefix}/case{case}/{name}"
                self._writer.add_image(tag, to_unit_range(channel)[None], step, dataformats="CHW")


class TextLogger(TensorBoardHandler):
    """Write a TensorBoard text entry at ``Events.STARTED`` (e.g. which prior generator made the priors).

    Args:
        tag: text tag.
        text: a string, a JSON-serialisable value (written as an indented JSON block), or a callable without
            arguments returning either (evaluated when the engine starts, e.g. ``@prior_generator.signature``).
        summary_writer: shared writer; default a new one in ``log_dir``.
        log_dir: folder of a new writer.
    """

    def __init__(self, tag: str, text: Any, summary_writer: Any = None, log_dir: str = "./runs") -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        self.tag = tag
        self.text = text

    def attach(self, engine: Engine) -> None:
        """Run at ``Events.STARTED`` of ``engine``."""
        engine.add_event_handler(Events.STARTED, self)

    def render(self) -> str:
        """The text to write (markdown)."""
        value = self.text() if callable(self.text) else self.text
        if isinstance(value, str):
            return value
        # 4-space indent: a markdown code block, so TensorBoard keeps the JSON layout
        return "\n".join("    " + line for line in json.dumps(value, indent=2, default=str).splitlines())

    def __call__(self, engine: Engine) -> None:
        """Write the text."""
        self._writer.add_text(self.tag, self.render(), engine.state.epoch)
        self._writer.flush()
