from .norm import (
    D2_NORM_NAMES,
    SNNorm,
    get_norm,
    known_norm_names,
    register_norm,
    resolve_norm,
)
from .switchable_norm import SwitchNorm2d, freeze_switch_norms
from .sync_switch_norm import SyncSwitchNorm2d

__all__ = [k for k in globals().keys() if not k.startswith("_")]
