"""The normalisation study: the paper's central comparison (FrozenBN, BN, GN, SN, SSN, SyncSN
at 1-8 images per process) rerun on sn_det's embedded synthetic data. The command line is
``projects/NormStudy/study.py`` (:func:`norm_study.cli.main`)."""

from .plan import IMS_PER_PROCESS, NORMS, SIZES, Norm, Run, Size, plan_runs, schedule
from .runner import RunFailed, execute, read_result

__all__ = [
    "IMS_PER_PROCESS",
    "NORMS",
    "SIZES",
    "Norm",
    "Run",
    "Size",
    "RunFailed",
    "execute",
    "plan_runs",
    "read_result",
    "schedule",
]
