"""The command-line programs of sn_det, runnable without a checkout as
``python -m sn_det.tools.<name>``; the repository's ``tools/*.py`` are thin wrappers."""
