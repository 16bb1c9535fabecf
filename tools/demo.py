#!/usr/bin/env python
"""The main job: train an SN Mask R-CNN on the embedded synthetic data and evaluate it.

The program lives in the package, ``sn_det/tools/demo.py``, so that an installed sn_det runs
it too, as ``python -m sn_det.tools.demo`` (``--help`` for usage).
"""

import sys

from sn_det.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
