"""The MONAI Label app's parts: settings from ``--conf`` (:mod:`lib.settings`), the datastore's labels as a training
datalist (:mod:`lib.datalist`), the infer tasks (:mod:`lib.infers`) and the train task (:mod:`lib.trainers`).

:mod:`lib.settings` and :mod:`lib.datalist` import nothing from MONAI Label, so the bundle's own test environment
can test them; the tasks need MONAI Label (``.venv-monailabel``).
"""
