"""Which config keys name norms, and the config view that lets detectron2's own builders
construct SN layers.

Every leaf of the config named ``NORM`` or ending in ``_NORM`` that holds a string is a norm
key (``MODEL.RESNETS.NORM``, ``MODEL.FPN.NORM``, ``MODEL.RETINANET.NORM``,
``MODEL.SEM_SEG_HEAD.NORM``, ``MODEL.ROI_BOX_HEAD.NORM``, ...; a project's own keys too):
they are found in the config itself, so a key detectron2 or a project adds needs no list
here. Numeric leaves such as ``SOLVER.WEIGHT_DECAY_NORM`` are not norm names.
"""

from typing import Iterable, List, Optional

from detectron2.config import CfgNode

from ..layers.norm import known_norm_names, resolve_norm

__all__ = ["norm_keys", "with_resolved_norms", "check_norm_config", "known_norm_names"]


def _is_norm_leaf(name: str, value) -> bool:
    return isinstance(value, str) and (name == "NORM" or name.endswith("_NORM"))


def norm_keys(cfg: CfgNode, _prefix: str = "") -> List[str]:
    """The dotted names of every norm key of ``cfg``, in the config's order.

    Returns:
        e.g. ``["MODEL.RESNETS.NORM", "MODEL.FPN.NORM", ...]``.
    """
    keys = []
    for name, value in cfg.items():
        if isinstance(value, CfgNode):
            keys += norm_keys(value, f"{_prefix}{name}.")
        elif _is_norm_leaf(name, value):
            keys.append(f"{_prefix}{name}")
    return keys


def _lookup(cfg: CfgNode, key: str):
    node = cfg
    *path, leaf = key.split(".")
    for part in path:
        node = getattr(node, part)
    return node, leaf


def with_resolved_norms(cfg: CfgNode, keys: Optional[Iterable[str]] = None) -> CfgNode:
    """A copy of ``cfg`` whose norm keys hold what detectron2's ``get_norm`` accepts.

    detectron2's builders read a norm name from the config and pass it to ``get_norm``, which
    also takes a callable. Replacing registered names ("SN", ...) by their factories lets those
    builders build SN layers unchanged; detectron2's own names stay strings.

    Args:
        keys: the keys to resolve; None: every norm key of ``cfg`` (:func:`norm_keys`).

    Raises:
        ValueError: a key holds an unknown norm name (the message names the key).
    """
    view = cfg.clone()
    view.defrost()
    for key in norm_keys(cfg) if keys is None else keys:
        node, leaf = _lookup(view, key)
        # Item assignment: yacs' __setattr__ only admits plain types. The view is only read by
        # builders, never dumped, so holding a callable is safe.
        node[leaf] = resolve_norm(node[leaf], cfg, key=key)
    view.freeze()
    return view


def check_norm_config(cfg: CfgNode) -> None:
    """Fail early, naming the key, when a norm key holds a name nobody knows.

    detectron2 would raise a bare ``KeyError`` deep inside a builder. Every known name works
    with every builder once the model is built by :func:`sn_det.modeling.build_model`, so
    nothing else is refused.

    Raises:
        ValueError: one sentence naming the offending key.
    """
    for key in norm_keys(cfg):
        node, leaf = _lookup(cfg, key)
        resolve_norm(node[leaf], cfg, key=key)  # unknown names raise here
