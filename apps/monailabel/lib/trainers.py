"""MONAI Label train task: the bundle's SAMAug segmentation training on the datastore's final labels.

The task runs ``configs/sam_priors.json`` + ``configs/train_samaug_seg.json`` (+ a preset) through MONAI's
``ConfigWorkflow``, as ``python -m monai.bundle run training`` would, with the overrides of
:func:`lib.datalist.training_overrides`: the served model's own configuration from its card, a datalist of the
datastore's labelled images, the request's ``max_epochs`` and ``device``, the app's prior cache (images already seen by
the infer task are cache hits) and the served model folder as ``ckpt_dir``, where the config's best-model saver
writes ``model.pt`` and ``model_card.json`` atomically. The infer task serves the new model from its next request.

MONAI Label runs each training in a child process (``python -m monailabel.interfaces.utils.app -m train``), so a
training never blocks the server; its log lines are the task's ``details`` in ``GET /train/``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import name_to_device

from bundle.atomic import write_text_atomic
from bundle.data.datalist import write_datalist
from bundle.folders import CONFIGS_DIR
from bundle.workflows.common.checkpoints import load_network_weights
from lib.datalist import datastore_datalist, preset_file, training_overrides
from lib.infers import ServedModel
from lib.settings import AppSettings, truthy

__all__ = ["SegmentationTrainTask"]

logger = logging.getLogger(__name__)

_CONFIGS = [str(CONFIGS_DIR / "sam_priors.json"), str(CONFIGS_DIR / "train_samaug_seg.json")]
_METADATA = str(CONFIGS_DIR / "metadata.json")


class SegmentationTrainTask(TrainTask):
    """Train the served segmentation model on the datastore's final labels.

    Request parameters (``POST /train/<task>`` body): ``max_epochs`` (10), ``val_split`` (0.2: fraction of the
    labelled images held out for validation; one labelled image is both), ``val_interval`` (1), ``pretrained``
    (true: start from the served weights, as MONAI Label's bundle trainer does; false: from scratch), ``device``.

    Args:
        served: the served segmentation model folder (also where the new model is written).
        settings: the app's settings (preset, prior cache, training folder, default device).
    """

    def __init__(self, served: ServedModel, settings: AppSettings) -> None:
        super().__init__("Train the SAM-prior segmentation model (configs/train_samaug_seg.json) on the datastore's "
                         "final labels; the model is written to the served model folder")
        self.served, self.settings = served, settings

    @property
    def stats_file(self) -> Path:
        return self.settings.train_dir / "stats.json"

    def config(self) -> dict:
        return {"max_epochs": 10, "val_split": 0.2, "val_interval": 1, "pretrained": True,
                "device": self.settings.device or ("cuda" if torch.cuda.is_available() else "cpu")}

    def stats(self) -> dict:
        """The last training's numbers (MONAI Label clients show ``best_metric`` and the epoch progress)."""
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {}

    def _write_stats(self, stats: dict) -> None:
        self.stats_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.stats_file, json.dumps(stats, indent=1))

    def _config_files(self, card: dict | None) -> list[str]:
        preset = preset_file(self.settings.preset, card)
        if card is None and preset is None:
            raise MONAILabelException(
                MONAILabelError.APP_TRAIN_FAILED,
                f"{self.served.folder} holds no model yet: start the server with --conf preset NAME (one of "
                "configs/presets) to train a first model from the datastore's labels")
        return _CONFIGS + ([preset] if preset else [])

    def _label_set(self, card: dict | None, files: list[str]) -> tuple[dict, list[str], str | None]:
        """``(regions, image channel names, dataset name)`` of the model being trained."""
        if card is not None:
            return card["config"]["regions"], card["config"]["image_channel_names"], card.get("dataset_name")
        parser = ConfigParser()
        parser.read_config(files)
        return (parser.get_parsed_content("regions"), parser.get_parsed_content("image_channel_names"),
                parser.get_parsed_content("dataset_name"))

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        req = {**self.config(), **{k: v for k, v in request.items() if v is not None}}
        start = time.time()
        device = torch.device(name_to_device(req["device"]))
        max_epochs, val_interval = int(req["max_epochs"]), int(req["val_interval"])
        card = self.served.card()
        files = self._config_files(card)
        regions, channels, dataset = self._label_set(card, files)
        try:
            datalist = datastore_datalist(datastore.datalist(), regions, channels, dataset, float(req["val_split"]))
        except ValueError as err:
            raise MONAILabelException(MONAILabelError.APP_TRAIN_FAILED, str(err)) from err
        run_dir = self.settings.train_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
        run_dir.mkdir(parents=True, exist_ok=True)
        datalist_path = write_datalist(datalist, run_dir / "datalist.json")
        overrides = training_overrides(card, datalist=datalist_path, model_dir=str(self.served.folder),
                                       run_dir=str(run_dir), prior_cache=str(self.settings.prior_cache),
                                       max_epochs=max_epochs, val_interval=val_interval, device=device)
        logger.info("training on %d labelled image(s) (%d validation), %d epoch(s), %s; run folder %s",
                    len(datalist["training"]), len(datalist["validation"]), max_epochs, device, run_dir)
        workflow = ConfigWorkflow(config_file=files, meta_file=_METADATA, workflow_type="train", run_id="training",
                                  logging_file=False, **overrides)
        workflow.initialize()
        if card is not None and truthy(req["pretrained"], "pretrained") and self.served.weights.is_file():
            load_network_weights(workflow.parser.get_parsed_content("network"), self.served.weights,
                                 workflow.parser.get_parsed_content("input_channel_names"),
                                 workflow.parser.get_parsed_content("prior_mode"), map_location=device)
            logger.info("starting from the served weights %s", self.served.weights)
        stats: dict[str, Any] = {"start_ts": int(start), "total_epochs": max_epochs, "epoch": 0, "best_metric": 0.0,
                                 "run_dir": str(run_dir), "train_images": len(datalist["training"]),
                                 "val_images": len(datalist["validation"])}
        trainer = workflow.parser.get_parsed_content("train#trainer")
        evaluator = workflow.parser.get_parsed_content("validate#evaluator")

        def epoch_done(engine) -> None:
            best = evaluator.state.best_metric
            stats.update(epoch=int(engine.state.epoch), best_metric=float(best) if best > -1 else 0.0)
            self._write_stats(stats)

        trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_done)
        self._write_stats(stats)
        try:
            workflow.run()
        finally:
            workflow.finalize()
        best = float(evaluator.state.best_metric)
        stats.update(total_time=round(time.time() - start, 1), best_metric=best if best > -1 else 0.0,
                     best_epoch=int(evaluator.state.best_metric_epoch),
                     model=str(self.served.weights))
        self._write_stats(stats)
        logger.info("training done in %.1f s: best validation Dice %.4f (epoch %d); model %s", stats["total_time"],
                    stats["best_metric"], stats["best_epoch"], self.served.weights)
        return stats
