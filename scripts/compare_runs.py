"""Compare evaluation runs over seeds: markdown table of mean ± std, differences and Welch p-values.

Example::

    python scripts/compare_runs.py --run raw=eval/raw_s0,eval/raw_s1,eval/raw_s2 \
        --run samaug='eval/samaug_s*' --metric dice --metric hd95 --out compare.md

Each folder holds the ``metrics_summary.json`` of a per-case report (e.g. the segmentation workflow's
``bundle.workflows.segmentation.report.SegmentationReport``, written by ``configs/evaluate.json``).
The logic lives in :mod:`bundle.workflows.common.compare`.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # run from a checkout without `pip install -e .`: make this repository's package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bundle.workflows.common.compare import main

    sys.exit(main())
