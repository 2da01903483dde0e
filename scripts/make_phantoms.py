"""Write phantom datasets in real on-disk layouts: ``python scripts/make_phantoms.py --help``."""
import sys, pathlib  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # also runs without `pip install -e .`
from bundle.testing.phantoms_cli import main  # noqa: E402
if __name__ == "__main__": raise SystemExit(main())  # noqa: E701
