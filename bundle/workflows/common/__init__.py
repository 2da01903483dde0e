"""Workflow pieces every task shares, for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``: checkpoints and
resuming, best-model selection, non-finite guards, TensorBoard handlers, per-case reports, run comparison, multi-GPU
set-up. Nothing here imports a task workflow."""

from bundle.workflows.common.best_model import AtomicSaveHandler, BestModelSaver, FinalValidation
from bundle.workflows.common.case_report import (
    PER_CASE_CSV,
    PER_CASE_JSON,
    SUMMARY_JSON,
    CaseReport,
    format_summary_table,
    summarise,
    write_report,
)
from bundle.workflows.common.checkpoints import (
    CheckedCheckpointLoader,
    EpochCheckpointSaver,
    ResumeFromCheckpoint,
    load_network_weights,
    save_atomic,
)
from bundle.workflows.common.compare import compare_table, load_runs
from bundle.workflows.common.ddp import (
    close_distributed,
    distributed_device,
    init_distributed,
    rank_zero_summary_writer,
    wrap_network,
)
from bundle.workflows.common.guards import (
    NonFiniteLossError,
    NonFiniteStateError,
    StopOnNonFiniteLoss,
    check_finite_state,
)
from bundle.workflows.common.handlers import LearningRateLogger, PerClassMetricLogger, PriorImageLogger, TextLogger

__all__ = [
    "EpochCheckpointSaver",
    "ResumeFromCheckpoint",
    "load_network_weights",
    "save_atomic",
    "CheckedCheckpointLoader",
    "AtomicSaveHandler",
    "BestModelSaver",
    "FinalValidation",
    "StopOnNonFiniteLoss",
    "NonFiniteLossError",
    "NonFiniteStateError",
    "check_finite_state",
    "PerClassMetricLogger",
    "LearningRateLogger",
    "PriorImageLogger",
    "TextLogger",
    "CaseReport",
    "PER_CASE_CSV",
    "PER_CASE_JSON",
    "SUMMARY_JSON",
    "summarise",
    "write_report",
    "format_summary_table",
    "compare_table",
    "load_runs",
    "init_distributed",
    "distributed_device",
    "close_distributed",
    "wrap_network",
    "rank_zero_summary_writer",
]
