"""Config keys of Sparse SN."""

from detectron2.config import CfgNode as CN


def add_sparse_sn_config(cfg: CN) -> CN:
    """Add ``MODEL.SSN.*`` (the sparsestmax radius schedule) to ``cfg`` in place. The layer
    settings (eps, momentum, BN term) are sn_det's ``MODEL.SN.*``, shared with SN."""
    cfg.MODEL.SSN = CN()
    # Largest radius, as a fraction of the distance from the simplex centre to a vertex
    # (sqrt(2/3) with the BN term, sqrt(1/2) without). 1.0 forces every choice one-hot.
    cfg.MODEL.SSN.RADIUS_MAX = 1.0
    # The radius grows linearly from 0 to RADIUS_MAX between these two fractions of
    # SOLVER.MAX_ITER (0 before, RADIUS_MAX after), driven by the training iteration so that a
    # resumed run continues the schedule where it stopped.
    cfg.MODEL.SSN.RAMP = (0.0, 0.8)
    # Every this many iterations, choices whose sparsestmax is one-hot are fixed for good.
    cfg.MODEL.SSN.FIX_PERIOD = 20
    return cfg
