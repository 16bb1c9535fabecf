#!/usr/bin/env python
"""Rerun the Switchable Normalization paper's central comparison on the embedded data: the same
small Mask R-CNN trained with FrozenBN, BN, GN, SN, SSN and SyncSN at 1, 2, 4 and 8 images
per process (learning rate scaled linearly, images seen held fixed), each run a subprocess of
the real training command, evaluated with COCOEvaluator. Resumable; see the README here.
"""

import sys

from sn_det.projects.norm_study.cli import main

if __name__ == "__main__":
    sys.exit(main())
