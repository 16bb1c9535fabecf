"""sn_det: Switchable Normalization for detectron2.

Importing the package registers its norm names ("SN", "SyncSN") and its builders in
detectron2's registries (backbones ``build_sn_resnet_backbone``,
``build_sn_resnet_fpn_backbone``, ``build_sn_retinanet_resnet_fpn_backbone``, heads
``SNFastRCNNConvFCHead``, ``SNMaskRCNNConvUpsampleHead``, ``SNRes5ROIHeads``). Models built by
``sn_det.modeling.build_model`` (the trainer's) take SN in every norm key with detectron2's
stock builder names as well.
"""

try:
    import detectron2  # noqa: F401  (a prerequisite, built against the user's torch)
except ImportError:
    raise ImportError(
        "sn_det needs detectron2, which is not installed in this environment: install it first "
        "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html; on Python 3.10 "
        "with torch 2.3, `pip install sal-detectron2==0.7.2 'fvcore<0.1.6' 'iopath<0.1.10'`)."
    ) from None

import warnings

# detectron2 decorates functions with torch.jit.script at import time, which torch >= 2.10
# reports as a FutureWarning on stderr, before anything a tool prints. It is detectron2's
# concern and says nothing about the user's run, so it is silenced here, for that message.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning
    )
    from . import data as _data  # registration: sn_synth_train, sn_synth_val
    from . import modeling as _modeling  # registration: backbones, heads
    from .config import add_sn_config, get_sn_cfg
    from .layers import SwitchNorm2d, SyncSwitchNorm2d, register_norm, resolve_norm

__version__ = "0.1.0"
__all__ = [
    "add_sn_config",
    "get_sn_cfg",
    "SwitchNorm2d",
    "SyncSwitchNorm2d",
    "register_norm",
    "resolve_norm",
]
