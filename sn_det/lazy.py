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

Build the model with :func:`build_lazy_model` rather than a bare ``instantiate``: it adds
what ``sn_det.modeling.build_model`` adds to a yacs model (frozen SN in the stages the ResNet
froze, per-level SN statistics in RetinaNet's head).
"""

from typing import Any, List

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.modeling.backbone import ResNet
from omegaconf import DictConfig, ListConfig
from torch import nn

from .layers.norm import _NORM_BUILDERS, D2_NORM_NAMES, SNNorm, known_norm_names
from .modeling.backbone import freeze_sn_stages
from .modeling.retinanet import cycle_retinanet_switch_norms

__all__ = ["resolve_lazy_norms", "build_lazy_model", "frozen_stage_count"]


def _is_norm_key(key) -> bool:
    return isinstance(key, str) and (key == "norm" or key.endswith("_norm"))


def resolve_lazy_norms(node: Any, _path: str = "") -> List[str]:
    """Replace, in place, every sn_det norm name ("SN", "SyncSN", ...) held by a ``norm`` or
    ``*_norm`` key of a LazyConfig tree by ``L(SNNorm)(name=...)``.

    Returns:
        the dotted paths of the keys replaced (for the log).

    Raises:
        ValueError: such a key holds a name neither detectron2 nor sn_det knows (detectron2's
            get_norm would fail with a bare KeyError while building the model).
    """
    replaced = []
    if isinstance(node, DictConfig):
        for key in list(node.keys()):
            value = node[key]
            path = f"{_path}.{key}" if _path else str(key)
            if _is_norm_key(key) and isinstance(value, str) and value in _NORM_BUILDERS:
                node[key] = L(SNNorm)(name=value)
                replaced.append(path)
            elif _is_norm_key(key) and isinstance(value, str) and value not in D2_NORM_NAMES:
                raise ValueError(
                    f"{path} = {value!r} is not a known norm type; known: "
                    f"{', '.join(repr(n) for n in known_norm_names())}"
                )
            elif isinstance(value, (DictConfig, ListConfig)):
                replaced += resolve_lazy_norms(value, path)
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            if isinstance(value, (DictConfig, ListConfig)):
                replaced += resolve_lazy_norms(value, f"{_path}[{i}]")
    return replaced


def frozen_stage_count(resnet: ResNet) -> int:
    """How many leading stages of a built ResNet (stem = 1, res2 = 2, ...) its ``freeze_at``
    froze: detectron2's ``ResNet.freeze`` sets ``requires_grad = False`` on every parameter
    of those stages, and on no other."""
    count = 0
    for stage in (resnet.stem, *resnet.stages):
        params = list(stage.parameters())
        if not params or any(p.requires_grad for p in params):
            break
        count += 1
    return count


def build_lazy_model(model_cfg) -> nn.Module:
    """``instantiate(model_cfg)`` plus what sn_det adds to a yacs-built model:

    - the SN layers of the stages each ResNet froze (its ``freeze_at``) are frozen too
      (normalise with their running statistics and never update them), where detectron2
      turns only BatchNorm into FrozenBatchNorm: the LazyConfig form of
      ``MODEL.BACKBONE.FREEZE_AT``;
    - RetinaNet's head gets SN statistics per FPN level.

    Args:
        model_cfg: the config's ``model`` node, its norm names resolved
            (:func:`resolve_lazy_norms`).
    """
    model = instantiate(model_cfg)
    for module in model.modules():
        if isinstance(module, ResNet):
            freeze_sn_stages(module, frozen_stage_count(module))
    return cycle_retinanet_switch_norms(model)
