"""What users and the CLI call on whole runs: :func:`~pyrogen.workflows.evaluate.evaluate` (a
trained run, or a model built in Python) and :func:`~pyrogen.workflows.compare.compare` (one
model per family on the same data and budget). Training itself is
:func:`pyrogen.training.train` and loading :func:`pyrogen.training.load`."""
