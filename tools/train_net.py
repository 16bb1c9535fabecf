#!/usr/bin/env python
"""Train or evaluate detectron2 models with Switchable Normalization.

This is detectron2's ``tools/train_net.py`` with sn_det's config keys, builders and
SN-aware optimizer; every flag of detectron2's parser works as usual (``--help`` lists them
with examples). The program lives in the package, ``sn_det/tools/train_net.py``, so that an
installed sn_det runs it too, as ``python -m sn_det.tools.train_net``.
"""

from sn_det.tools.train_net import invoke_main

if __name__ == "__main__":
    invoke_main()
