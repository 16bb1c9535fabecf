#!/usr/bin/env python
"""Chart, CSV and markdown of the importance ratios of every SN layer of a checkpoint.

The program lives in the package, ``sn_det/tools/visualize_sn.py``, so that an installed sn_det runs
it too, as ``python -m sn_det.tools.visualize_sn`` (``--help`` for usage).
"""

import sys

from sn_det.tools.visualize_sn import main

if __name__ == "__main__":
    sys.exit(main())
