"""Batch inference for every trained model of the bundle: NIfTI files, folders, datalists and DICOM exports in;
NIfTI, DICOM-SEG or class probabilities out, with a summary (``configs/batch_inference.json``, ``sam-priors-infer``).

The last room but one of the package (``data -> sam -> priors -> networks -> workflows -> inference``): it may use
every task workflow, and nothing but :mod:`bundle.weak` imports it.
"""
