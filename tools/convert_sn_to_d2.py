#!/usr/bin/env python
"""Convert a published ImageNet SN checkpoint into a detectron2 checkpoint.

The program lives in the package, ``sn_det/tools/convert_sn_to_d2.py``, so that an installed sn_det runs
it too, as ``python -m sn_det.tools.convert_sn_to_d2`` (``--help`` for usage).
"""

import sys

from sn_det.tools.convert_sn_to_d2 import main

if __name__ == "__main__":
    sys.exit(main())
