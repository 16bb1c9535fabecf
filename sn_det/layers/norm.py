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

__all__ = [
    "register_norm",
    "resolve_norm",
    "get_norm",
    "known_norm_names",
    "D2_NORM_NAMES",
    "NormFactory",
    "SNNorm",
]

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


class SNNorm:
    """A picklable, config-friendly norm factory: ``SNNorm("SN", momentum=0.9)(channels)``.

    detectron2's ``get_norm`` takes callables, so this works wherever a builder takes a norm,
    and in LazyConfig as ``L(SNNorm)(name="SN")`` (saved and loaded like any LazyCall).

    Args:
        name: a norm name registered with :func:`register_norm` ("SN", "SyncSN", ...).
        eps, momentum, using_moving_average, using_bn: the ``MODEL.SN`` settings; None keeps
            sn_det's defaults.
    """

    def __init__(
        self,
        name: str = "SN",
        eps: Optional[float] = None,
        momentum: Optional[float] = None,
        using_moving_average: Optional[bool] = None,
        using_bn: Optional[bool] = None,
    ):
        if name not in _NORM_BUILDERS:
            raise ValueError(
                f"SNNorm: {name!r} is not a norm registered with sn_det; registered: "
                + ", ".join(repr(n) for n in sorted(_NORM_BUILDERS))
            )
        self.name = name
        self.settings = dict(
            EPS=eps, MOMENTUM=momentum, USING_MOVING_AVERAGE=using_moving_average, USING_BN=using_bn
        )

    def _cfg(self) -> CfgNode:
        from ..config import add_sn_config

        cfg = add_sn_config(CfgNode({"MODEL": CfgNode(), "SOLVER": CfgNode(), "TEST": CfgNode()}))
        for key, value in self.settings.items():
            if value is not None:
                cfg.MODEL.SN[key] = value
        return cfg

    def __call__(self, channels: int) -> nn.Module:
        return _NORM_BUILDERS[self.name](self._cfg())(channels)

    def __repr__(self) -> str:
        set_ = {k.lower(): v for k, v in self.settings.items() if v is not None}
        return f"SNNorm({self.name!r}" + "".join(f", {k}={v!r}" for k, v in set_.items()) + ")"
