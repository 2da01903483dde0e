"""Write a Decathlon-style datalist for a dataset folder; see ``bundle.data.datalist_cli`` (``--help``)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, too

from bundle.data.datalist_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
