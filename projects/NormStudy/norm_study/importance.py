"""The final switch weights (importance ratios) of a trained run's SN-type layers."""

from typing import List

from detectron2.modeling import build_model

from sn_det.checkpoint import SNDetectionCheckpointer
from sn_det.engine import load_cfg
from sn_det.modeling import LayerImportance, importance_ratios
from sn_det.projects.sparse_sn import add_sparse_sn_config

__all__ = ["switch_importance", "rows_from_json"]


def _padded(p) -> tuple:
    """IN/LN/BN shares from a (3,) or (2,) (no BN term) probability tensor."""
    p = [float(v) for v in p.detach().double()]
    return tuple(p) if len(p) == 3 else (p[0], p[1], 0.0)


def switch_importance(config_file: str, weights: str) -> List[dict]:
    """The IN/LN/BN shares of every SN-type layer of a trained model, in network order.

    sn_det's :func:`importance_ratios` lists the layers and their groups; its shares are the
    softmax of the switch logits, which is SN's mixing. A Sparse SN layer mixes with
    sparsestmax instead (``switch_probabilities``), so its shares are read from the layer's
    own ``switch_weights()``: at the end of the radius schedule they are one-hot.

    Args:
        config_file: the run's config.yaml (as detectron2 dumped it into OUTPUT_DIR).
        weights: the run's model_final.pth.

    Returns:
        one dict per layer: ``name``, ``group``, ``mean`` and ``var`` (IN, LN, BN shares).
    """
    cfg = load_cfg(config_file, ("MODEL.DEVICE", "cpu"), config_adders=(add_sparse_sn_config,))
    model = build_model(cfg)
    SNDetectionCheckpointer(model).load_weights_strictly(weights)
    modules = dict(model.named_modules())
    rows = []
    for r in importance_ratios(model):
        layer = modules[r.name]
        if getattr(layer, "switch_probabilities", False):
            mean, var = layer.switch_weights()
            r = r._replace(mean=_padded(mean), var=_padded(var))
        rows.append(r._asdict())
    return rows


def rows_from_json(rows: List[dict]) -> List[LayerImportance]:
    """The inverse of :func:`switch_importance`'s dicts, for sn_det's importance charts."""
    return [LayerImportance(r["name"], r["group"], tuple(r["mean"]), tuple(r["var"])) for r in rows]
