"""WeakMedSAM: segmentation from slice labels, through CAMs refined by a SAM prompt-affinity random walk.

Stages (:mod:`bundle.workflows.weak.pipeline`, run ids of ``configs/train_weak.json``): ``sam_features``
(:mod:`.features`), ``subclasses`` (:mod:`.subclass_stage`), ``classifier`` (:mod:`.classifier`), ``pseudo_labels``
and ``pseudo_quality`` (:mod:`.pseudo_stage`, TensorBoard panels in :mod:`.panels`), ``segmentation`` and
``evaluation`` (the SAMAug segmentation workflow on the pseudo labels); ``training`` (or ``run``) runs them all; the
``evaluation`` stage alone is the run id ``evaluating``.
"""
