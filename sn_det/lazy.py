"""SN in detectron2's LazyConfig (Python) configs.

detectron2's LazyConfig builders call ``detectron2.layers.get_norm`` with whatever the config
holds; that function knows only detectron2's names, and takes callables. Two ways to put SN
there:

- a factory: ``model.backbone.norm = L(SNNorm)(name="SN")`` (``sn_det.layers.SNNorm``);
- a name: ``model.backbone.norm = "SN"``, then :func:`resolve_lazy_norms` on the config
  before ``instantiate`` (``tools/lazyconfig_train_net.py`` does it), which replaces every
  registered sn_det name under a ``norm``/``*_norm`` key by that factory.

The optimizer counterpart is ``L(sn_optimizer_params)(weight_decay_norm=0.0)``
(``sn_det.engine.sn_optimizer_params``), which gives SN's parameters the same weight-decay
rules as the yacs path.
"""

from typing import Any, List

from detectron2.config import LazyCall as L
from omegaconf import DictConfig, ListConfig

from .layers.norm import _NORM_BUILDERS, SNNorm

__all__ = ["resolve_lazy_norms"]


def _is_norm_key(key) -> bool:
    return isinstance(key, str) and (key == "norm" or key.endswith("_norm"))


def resolve_lazy_norms(node: Any, _path: str = "") -> List[str]:
    """Replace, in place, every sn_det norm name ("SN", "SyncSN", ...) held by a ``norm`` or
    ``*_norm`` key of a LazyConfig tree by ``L(SNNorm)(name=...)``.

    Returns:
        the dotted paths of the keys replaced (for the log).
    """
    replaced = []
    if isinstance(node, DictConfig):
        for key in list(node.keys()):
            value = node[key]
            path = f"{_path}.{key}" if _path else str(key)
            if _is_norm_key(key) and isinstance(value, str) and value in _NORM_BUILDERS:
                node[key] = L(SNNorm)(name=value)
                replaced.append(path)
            elif isinstance(value, (DictConfig, ListConfig)):
                replaced += resolve_lazy_norms(value, path)
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            if isinstance(value, (DictConfig, ListConfig)):
                replaced += resolve_lazy_norms(value, f"{_path}[{i}]")
    return replaced
