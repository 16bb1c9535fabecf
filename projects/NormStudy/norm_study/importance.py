"""The final switch weights (importance ratios) of a trained run's SN-type layers."""

from typing import List

from sn_det.checkpoint import SNDetectionCheckpointer
from sn_det.engine import load_cfg
from sn_det.modeling import LayerImportance, build_model, importance_ratios
from sn_det.projects.sparse_sn import add_sparse_sn_config

__all__ = ["switch_importance", "rows_from_json"]


def switch_importance(config_file: str, weights: str) -> List[dict]:
    """The IN/LN/BN shares of every SN-type layer of a trained model, in network order.

    sn_det's :func:`importance_ratios`: each layer's own mixing probabilities (softmax for SN,
    sparsestmax for Sparse SN, one-hot at the end of its radius schedule).

    Args:
        config_file: the run's config.yaml (as detectron2 dumped it into OUTPUT_DIR).
        weights: the run's model_final.pth.

    Returns:
        one dict per layer: ``name``, ``group``, ``mean`` and ``var`` (IN, LN, BN shares).
    """
    cfg = load_cfg(config_file, ("MODEL.DEVICE", "cpu"), config_adders=(add_sparse_sn_config,))
    model = build_model(cfg)
    SNDetectionCheckpointer(model).load_weights_strictly(weights)
    return [r._asdict() for r in importance_ratios(model)]


def rows_from_json(rows: List[dict]) -> List[LayerImportance]:
    """The inverse of :func:`switch_importance`'s dicts, for sn_det's importance charts."""
    return [LayerImportance(r["name"], r["group"], tuple(r["mean"]), tuple(r["var"])) for r in rows]
