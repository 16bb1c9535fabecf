"""Norm names -> module factories, so configs can say "SN" wherever detectron2 takes a norm.

detectron2's ``get_norm(norm, channels)`` accepts a string it knows or a callable
``channels -> nn.Module``. Configs hold strings, so builders call :func:`resolve_norm`, which
turns names registered here into callables built from the config (``MODEL.SN.*``) and passes
detectron2's own names through untouched.

Add a norm type with one decorator::

    @register_norm("MyNorm")
    def _my_norm(cfg):
        return lambda channels: MyNorm(channels, eps=cfg.MODEL.SN.EPS)
"""

import functools
from typing import Callable, Dict, Optional, Union

from detectron2.config import CfgNode
from detectron2.layers import get_norm as d2_get_norm
from torch import nn

from .switchable_norm import SwitchNorm2d
from .sync_switch_norm import SyncSwitchNorm2d

__all__ = ["register_norm", "resolve_norm", "get_norm", "known_norm_names", "D2_NORM_NAMES"]

NormFactory = Callable[[int], nn.Module]

# The strings detectron2.layers.get_norm understands ("" means no norm).
D2_NORM_NAMES = (
    "",
    "BN",
    "SyncBN",
    "FrozenBN",
    "GN",
    "nnSyncBN",
    "naiveSyncBN",
    "naiveSyncBN_N",
    "LN",
)

_NORM_BUILDERS: Dict[str, Callable[[CfgNode], NormFactory]] = {}


def register_norm(name: str):
    """Decorator registering ``builder(cfg) -> (channels -> nn.Module)`` under ``name``."""

    def deco(builder):
        if name in _NORM_BUILDERS or name in D2_NORM_NAMES:
            raise KeyError(f"norm name {name!r} is already taken")
        _NORM_BUILDERS[name] = builder
        return builder

    return deco


def known_norm_names():
    """All names :func:`resolve_norm` accepts, detectron2's first."""
    return list(D2_NORM_NAMES) + sorted(_NORM_BUILDERS)


def resolve_norm(
    norm: Union[str, NormFactory, None], cfg: CfgNode, key: Optional[str] = None
) -> Union[str, NormFactory, None]:
    """Turn a config norm name into what detectron2's ``get_norm`` accepts.

    Args:
        norm: a name ("SN", "BN", "", ...), a callable, or None.
        cfg: the full config (registered builders read their settings from it).
        key: the config key the name came from, named in the error message.

    Returns:
        a callable ``channels -> nn.Module`` for registered names, else ``norm`` unchanged.

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    if norm is None or callable(norm):
        return norm
    if norm in _NORM_BUILDERS:
        return _NORM_BUILDERS[norm](cfg)
    if norm in D2_NORM_NAMES:
        return norm
    where = f"{key} = " if key else "norm "
    raise ValueError(
        f"{where}{norm!r} is not a known norm type; known: "
        + ", ".join(repr(n) for n in known_norm_names())
    )


def get_norm(
    norm: Union[str, NormFactory, None], out_channels: int, cfg: CfgNode
) -> Optional[nn.Module]:
    """detectron2's ``get_norm`` that also knows the names registered here."""
    return d2_get_norm(resolve_norm(norm, cfg), out_channels)


def sn_kwargs(cfg: CfgNode) -> dict:
    """SwitchNorm2d/SyncSwitchNorm2d constructor arguments from ``cfg.MODEL.SN``."""
    sn = cfg.MODEL.SN
    return dict(
        eps=sn.EPS,
        momentum=sn.MOMENTUM,
        using_moving_average=sn.USING_MOVING_AVERAGE,
        using_bn=sn.USING_BN,
    )


@register_norm("SN")
def _switch_norm(cfg: CfgNode) -> NormFactory:
    return functools.partial(SwitchNorm2d, **sn_kwargs(cfg))


@register_norm("SyncSN")
def _sync_switch_norm(cfg: CfgNode) -> NormFactory:
    # BN-term statistics over all ranks of the default process group (detectron2's launch).
    return functools.partial(SyncSwitchNorm2d, **sn_kwargs(cfg))
