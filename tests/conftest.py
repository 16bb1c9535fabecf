import os
import sys

import torch

# Tests import their plain reference implementations (sn_reference.py) from this folder.
sys.path.insert(0, os.path.dirname(__file__))
# 2-core CI machines: keep intra-op threads bounded and runs reproducible.
torch.set_num_threads(min(2, os.cpu_count() or 1))
