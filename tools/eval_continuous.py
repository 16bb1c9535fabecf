#!/usr/bin/env python
"""Evaluate each finished checkpoint of a training folder once, as it appears.

The program lives in the package, ``sn_det/tools/eval_continuous.py``, so that an installed sn_det runs
it too, as ``python -m sn_det.tools.eval_continuous`` (``--help`` for usage).
"""

import sys

from sn_det.tools.eval_continuous import main

if __name__ == "__main__":
    sys.exit(main())
