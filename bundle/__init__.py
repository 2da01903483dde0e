"""SAM priors for 3D medical imaging: SAMAug, SAMAug-C, WeakMedSAM and SAM-Mix as a MONAI bundle."""

__version__ = "0.1.0"
