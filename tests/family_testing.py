"""Helpers shared by the model-family tests: where a model's SN layers are."""

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d

from sn_det.layers import SwitchNorm2d


def assert_sn_where_expected(model, parts):
    """No other norm anywhere, no conv bias before an SN, and an SN layer under every
    module-name prefix of ``parts``."""
    for name, m in model.named_modules():
        assert not isinstance(
            m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, FrozenBatchNorm2d)
        ), f"{name} is {type(m).__name__}, but every norm key says SN"
        if isinstance(m, Conv2d) and isinstance(m.norm, SwitchNorm2d):
            assert m.bias is None, f"{name} has a bias although SN follows"
    sn_names = [n for n, m in model.named_modules() if isinstance(m, SwitchNorm2d)]
    for part in parts:
        assert any(n.startswith(part) for n in sn_names), f"no SN under {part}"
