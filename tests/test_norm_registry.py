"""The norm-name registry: SN resolves from MODEL.SN, detectron2 names pass through."""

import pytest
import torch
from detectron2.config import get_cfg

from sn_det import add_sn_config
from sn_det.layers import SwitchNorm2d, get_norm, known_norm_names, register_norm, resolve_norm
from sn_det.layers import norm as norm_module


def sn_cfg(**sn):
    cfg = add_sn_config(get_cfg())
    for k, v in sn.items():
        setattr(cfg.MODEL.SN, k, v)
    return cfg


def test_sn_factory_reads_model_sn():
    cfg = sn_cfg(USING_BN=False, MOMENTUM=0.9, EPS=1e-3, USING_MOVING_AVERAGE=False)
    m = resolve_norm("SN", cfg)(16)
    assert isinstance(m, SwitchNorm2d)
    assert (m.num_features, m.using_bn, m.momentum, m.eps, m.using_moving_average) == (
        16,
        False,
        0.9,
        1e-3,
        False,
    )
    assert isinstance(get_norm("SN", 8, cfg), SwitchNorm2d)


def test_default_sn_config_values():
    sn = sn_cfg().MODEL.SN
    assert (sn.EPS, sn.MOMENTUM, sn.USING_MOVING_AVERAGE, sn.USING_BN, sn.LAST_GAMMA) == (
        1e-5,
        0.997,
        True,
        True,
        False,
    )


@pytest.mark.parametrize("name", ["BN", "GN", "FrozenBN", "SyncBN", ""])
def test_detectron2_names_pass_through(name):
    assert resolve_norm(name, sn_cfg()) == name


def test_detectron2_norms_still_build():
    assert isinstance(get_norm("GN", 64, sn_cfg()), torch.nn.GroupNorm)
    assert get_norm("", 64, sn_cfg()) is None


def test_callables_pass_through():
    f = lambda c: torch.nn.BatchNorm2d(c)  # noqa: E731
    assert resolve_norm(f, sn_cfg()) is f


def test_unknown_name_lists_known_names_and_key():
    with pytest.raises(ValueError) as e:
        resolve_norm("SNN", sn_cfg(), key="MODEL.RESNETS.NORM")
    msg = str(e.value)
    assert "MODEL.RESNETS.NORM = 'SNN' is not a known norm type" in msg
    for name in ("'SN'", "'BN'", "'GN'"):
        assert name in msg


def test_register_a_new_norm_with_one_decorator(monkeypatch):
    monkeypatch.setattr(norm_module, "_NORM_BUILDERS", dict(norm_module._NORM_BUILDERS))

    @register_norm("IN_test")
    def _build(cfg):
        return lambda c: torch.nn.InstanceNorm2d(c, eps=cfg.MODEL.SN.EPS)

    assert "IN_test" in known_norm_names()
    assert isinstance(get_norm("IN_test", 4, sn_cfg()), torch.nn.InstanceNorm2d)
    with pytest.raises(KeyError, match="already taken"):
        register_norm("BN")(_build)
