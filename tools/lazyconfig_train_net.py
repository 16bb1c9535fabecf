#!/usr/bin/env python
"""Train or evaluate an SN model from a LazyConfig (Python) config: detectron2's
lazyconfig_train_net with SN names resolved and sn_det's checkpointer. The program lives in
the package, ``sn_det/tools/lazyconfig_train_net.py`` (``--help`` for usage)."""

from sn_det.tools.lazyconfig_train_net import invoke_main

if __name__ == "__main__":
    invoke_main()
