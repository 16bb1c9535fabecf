"""An SGD optimizer that treats SN parameters the way detectron2 treats its norms."""

from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

from ..layers import SwitchNorm2d

__all__ = ["get_sn_optimizer_params", "sn_optimizer_params", "build_sn_optimizer"]


def get_sn_optimizer_params(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """:func:`sn_optimizer_params` with the yacs config's SOLVER settings."""
    return sn_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_switch=cfg.SOLVER.WEIGHT_DECAY_SWITCH,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )


def sn_optimizer_params(
    model: torch.nn.Module,
    base_lr: Optional[float] = None,
    weight_decay_norm: Optional[float] = 0.0,
    weight_decay_switch: float = 0.0,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """detectron2's parameter groups (``get_default_optimizer_params``), with SN's parameters
    placed like a norm's. The LazyConfig counterpart of detectron2's
    ``L(get_default_optimizer_params)(weight_decay_norm=0.0)`` is
    ``L(sn_optimizer_params)(weight_decay_norm=0.0)`` (``model`` set before instantiating).

    detectron2 recognises norms by a fixed tuple of module types, which SN is not in. So:
    SN ``weight``/``bias`` take ``weight_decay_norm`` (then ``weight_decay_bias`` for
    ``bias`` when set, as detectron2 orders it), and ``mean_weight``/``var_weight`` (the
    switch logits) take ``weight_decay_switch``.
    """
    switch = {"weight_decay": weight_decay_switch}
    groups = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay_norm=weight_decay_norm,
        bias_lr_factor=bias_lr_factor,
        weight_decay_bias=weight_decay_bias,
        # Only SN layers have parameters with these names.
        overrides={"mean_weight": switch, "var_weight": dict(switch)},
    )
    sn_affine = {
        id(p): name
        for m in model.modules()
        if isinstance(m, SwitchNorm2d)
        for name, p in (("weight", m.weight), ("bias", m.bias))
    }
    if weight_decay_norm is None or not sn_affine:
        return groups
    per_param = []
    for group in groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            h = dict(hyper)
            name = sn_affine.get(id(p))
            if name == "weight" or (name == "bias" and weight_decay_bias is None):
                h["weight_decay"] = weight_decay_norm
            per_param.append({"params": [p], **h})
    return reduce_param_groups(per_param)


def build_sn_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's ``build_optimizer`` (SGD, gradient clipping) with SN-aware groups."""
    return maybe_add_gradient_clipping(
        cfg,
        torch.optim.SGD(
            get_sn_optimizer_params(cfg, model),
            lr=cfg.SOLVER.BASE_LR,
            momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            foreach=True,
        ),
    )
