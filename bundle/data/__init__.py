"""Datasets: on-disk layouts, datalists, case ids and input checks (phantoms: :mod:`bundle.testing`)."""
