"""SAM priors for 3D medical imaging: SAMAug, SAMAug-C, WeakMedSAM and SAM-Mix as a MONAI bundle."""

from bundle.errors import install_excepthook
from bundle.log_noise import quiet_known_repeats
from bundle.overrides import check_command_line

__version__ = "0.1.0"

# every config imports the package: a failing ``python -m monai.bundle run ...`` then ends with one
# ``ERROR: <file>: <problem>`` line under MONAI's long traceback (bundle/errors.py)
install_excepthook()
# ... and MONAI's known harmless warnings (nvImageCodec missing, once per LoadImage) are shown once, not ten times
quiet_known_repeats()
