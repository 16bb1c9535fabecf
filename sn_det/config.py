"""sn_det's config keys. Call :func:`add_sn_config` on a detectron2 config before merging a
file that uses them (``tools/train_net.py`` does)."""

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_sn_config", "get_sn_cfg", "SNCfgNode", "D2_ZOO_BASE"]

# A _BASE_ with this prefix names a config of detectron2's own model zoo, wherever detectron2
# is installed: _BASE_: "d2zoo://Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml". (yacs joins a
# relative _BASE_ to the file's folder, and a shipped config cannot know detectron2's.)
D2_ZOO_BASE = "d2zoo://"


class SNCfgNode(CN):
    """detectron2's CfgNode whose ``_BASE_`` may name a detectron2 model-zoo config with
    :data:`D2_ZOO_BASE`; everything else is detectron2's."""

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe: bool = False):
        if isinstance(filename, str) and D2_ZOO_BASE in filename:
            from detectron2 import model_zoo

            # fvcore has joined the child's folder in front of the prefix: keep what follows.
            name = filename[filename.index(D2_ZOO_BASE) + len(D2_ZOO_BASE) :]
            try:
                filename = model_zoo.get_config_file(name)
            except RuntimeError:
                raise FileNotFoundError(
                    f"_BASE_ {D2_ZOO_BASE}{name}: detectron2's model zoo has no such config"
                ) from None
        return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)


def get_sn_cfg(config_adders=()) -> SNCfgNode:
    """detectron2's default config with sn_det's keys (and a project's, ``config_adders``),
    able to read ``d2zoo://`` bases. Converted last, so that every node is an SNCfgNode
    (yacs refuses to merge a node into one of another type)."""
    cfg = add_sn_config(get_cfg())
    for add in config_adders:
        add(cfg)
    return SNCfgNode(cfg)


def add_sn_config(cfg: CN) -> CN:
    """Add ``MODEL.SN.*`` (the layer settings of every norm named "SN" or "SyncSN"),
    ``MODEL.MIN_LOADED_FRACTION``, ``SOLVER.WEIGHT_DECAY_SWITCH`` and ``TEST.SN_BATCH_AVG.*``
    to ``cfg`` in place."""
    _C = cfg
    _C.MODEL.SN = CN()
    # Added to the mixed variance before the square root.
    _C.MODEL.SN.EPS = 1e-5
    # Weight of the OLD running value in the moving average (the SN papers' convention;
    # PyTorch BatchNorm's momentum=0.1 corresponds to 0.9 here). Detection code used 0.997.
    _C.MODEL.SN.MOMENTUM = 0.997
    # True: running statistics are a moving average. False: batch-average mode, where training
    # forwards accumulate sums that a separate pass turns into pooled statistics.
    _C.MODEL.SN.USING_MOVING_AVERAGE = True
    # Mix IN, LN and BN (True) or IN and LN only (False: the "(8,1)" setting, one image per
    # GPU, where the BN term would equal IN in training). False models have no running stats.
    _C.MODEL.SN.USING_BN = True
    # Zero-initialise the weight (gamma) of the last SN of every residual branch in the
    # backbone and the C4 res5 head, so each block starts as the identity.
    _C.MODEL.SN.LAST_GAMMA = False

    # Loading MODEL.WEIGHTS (or --eval-only's checkpoint) is refused when it fills less than
    # this share (by number of values) of what it is meant to fill: the backbone for an
    # ImageNet-style checkpoint, the modules it names for a detectron2 one. Catches a
    # checkpoint of another architecture, which detectron2 only warns about (then trains from
    # random weights). 0 loads anything, as detectron2 does.
    _C.MODEL.MIN_LOADED_FRACTION = 0.5

    # Weight decay of the SN switch logits (mean_weight, var_weight); the seed used 0. SN's
    # weight/bias follow SOLVER.WEIGHT_DECAY_NORM like detectron2's norms.
    _C.SOLVER.WEIGHT_DECAY_SWITCH = 0.0

    # Batch-average statistics for SN (the seed's TEST.USE_BATCH_AVG), SN's counterpart of
    # TEST.PRECISE_BN: before every evaluation (training at TEST.EVAL_PERIOD and at the end,
    # and tools/train_net.py --eval-only), the BN-term running statistics of every SN layer
    # are recomputed as pooled statistics of NUM_ITER training-mode forwards, without grad.
    _C.TEST.SN_BATCH_AVG = CN()
    _C.TEST.SN_BATCH_AVG.ENABLED = False
    # Number of training batches (each of SOLVER.IMS_PER_BATCH images over all processes).
    _C.TEST.SN_BATCH_AVG.NUM_ITER = 200
    return cfg
