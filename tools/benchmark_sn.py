#!/usr/bin/env python
"""Benchmark SN against BatchNorm, GroupNorm and the textbook formulation.

The program lives in the package, ``sn_det/tools/benchmark_sn.py``, so that an installed sn_det runs
it too, as ``python -m sn_det.tools.benchmark_sn`` (``--help`` for usage).
"""

from sn_det.tools.benchmark_sn import main

if __name__ == "__main__":
    main()
