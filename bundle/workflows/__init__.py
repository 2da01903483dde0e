"""The task workflows and the pieces they share.

- :mod:`bundle.workflows.common`: checkpoints, best-model selection, non-finite guards, TensorBoard handlers,
  per-case reports, run comparison across seeds, multi-GPU set-up; nothing in it knows a task.
- :mod:`bundle.workflows.segmentation`: SAMAug (network input by ``prior_mode``, train step, inferer, segmentation
  metrics and report, region transforms, config helpers).

A task workflow imports ``common`` and the earlier rooms (``bundle.data``, ``bundle.sam``, ``bundle.priors``), never
another task workflow (``tests/test_architecture.py`` checks it). This package imports none of them itself, so a
config loads only the task it runs.
"""
