"""Test instruments, apart from the product: phantom anatomy and its writers in each dataset's layout (the embedded
default data of the main job and of the tests), a CT DICOM series writer used as the oracle of the DICOM reader, and
the tiny SAM trained on shapes for the tests. No product room imports this one (``tests/test_architecture.py``);
the scripts and the ``sam-priors-phantoms`` command do."""
