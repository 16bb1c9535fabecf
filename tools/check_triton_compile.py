#!/usr/bin/env python
"""Compile SN's Triton kernels for GPU architectures without a GPU (registers, spills, errors).

The program lives in the package, ``sn_det/tools/check_triton_compile.py``, so that an installed
sn_det runs it too, as ``python -m sn_det.tools.check_triton_compile`` (``--help`` for usage).
"""

from sn_det.tools.check_triton_compile import main

if __name__ == "__main__":
    main()
