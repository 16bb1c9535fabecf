"""Which config keys name norms, which builders consume them, and the config view that lets
detectron2's own builders construct SN layers."""

from typing import Iterable

from detectron2.config import CfgNode

from ..layers.norm import D2_NORM_NAMES, known_norm_names, resolve_norm

# Every norm key sn_det resolves, in the order a model is built.
NORM_KEYS = (
    "MODEL.RESNETS.NORM",
    "MODEL.FPN.NORM",
    "MODEL.ROI_BOX_HEAD.NORM",
    "MODEL.ROI_MASK_HEAD.NORM",
)


def _lookup(cfg: CfgNode, key: str):
    node = cfg
    *path, leaf = key.split(".")
    for part in path:
        node = getattr(node, part)
    return node, leaf


def with_resolved_norms(cfg: CfgNode, keys: Iterable[str] = NORM_KEYS) -> CfgNode:
    """A copy of ``cfg`` whose norm keys hold what detectron2's ``get_norm`` accepts.

    detectron2's builders read a norm name from the config and pass it to ``get_norm``, which
    also takes a callable. Replacing registered names ("SN", ...) by their factories lets those
    builders build SN layers unchanged; detectron2's own names stay strings.

    Raises:
        ValueError: a key holds an unknown norm name (the message names the key).
    """
    view = cfg.clone()
    view.defrost()
    for key in keys:
        node, leaf = _lookup(view, key)
        # Item assignment: yacs' __setattr__ only admits plain types. The view is only read by
        # builders, never dumped, so holding a callable is safe.
        node[leaf] = resolve_norm(node[leaf], cfg, key=key)
    view.freeze()
    return view


# For each norm key: (config key naming the consumer, consumers that understand sn_det names).
_CONSUMERS = {
    "MODEL.RESNETS.NORM": (
        "MODEL.BACKBONE.NAME",
        ("build_sn_resnet_backbone", "build_sn_resnet_fpn_backbone"),
    ),
    "MODEL.FPN.NORM": ("MODEL.BACKBONE.NAME", ("build_sn_resnet_fpn_backbone",)),
    "MODEL.ROI_BOX_HEAD.NORM": ("MODEL.ROI_BOX_HEAD.NAME", ("SNFastRCNNConvFCHead",)),
    "MODEL.ROI_MASK_HEAD.NORM": ("MODEL.ROI_MASK_HEAD.NAME", ("SNMaskRCNNConvUpsampleHead",)),
}


def check_norm_config(cfg: CfgNode) -> None:
    """Fail early, naming the keys, when a config's norms cannot be built as written.

    Catches unknown norm names (detectron2 would raise a bare KeyError deep inside a builder)
    and sn_det names given to a detectron2 builder that cannot resolve them.

    Raises:
        ValueError: one sentence naming the offending key(s).
    """
    for key in NORM_KEYS:
        node, leaf = _lookup(cfg, key)
        name = getattr(node, leaf)
        resolve_norm(name, cfg, key=key)  # unknown names raise here
        if name in D2_NORM_NAMES:
            continue
        consumer_key, ok = _CONSUMERS[key]
        consumer = getattr(*_lookup(cfg, consumer_key))
        if consumer not in ok:
            raise ValueError(
                f"{key} = {name!r} is an sn_det norm, but {consumer_key} = {consumer!r} is a "
                f"detectron2 builder that only knows {', '.join(repr(n) for n in D2_NORM_NAMES)}; "
                f"use {' or '.join(repr(n) for n in ok)}"
            )
    res5_reader = cfg.MODEL.ROI_HEADS.NAME
    if cfg.MODEL.RESNETS.NORM not in D2_NORM_NAMES and res5_reader == "Res5ROIHeads":
        raise ValueError(
            f"MODEL.RESNETS.NORM = {cfg.MODEL.RESNETS.NORM!r} also builds the C4 res5 head, but "
            "MODEL.ROI_HEADS.NAME = 'Res5ROIHeads' cannot resolve it; use 'SNRes5ROIHeads'"
        )


__all__ = ["NORM_KEYS", "with_resolved_norms", "check_norm_config", "known_norm_names"]
