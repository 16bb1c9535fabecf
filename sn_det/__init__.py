"""sn_det: Switchable Normalization for detectron2."""

from .config import add_sn_config
from .layers import SwitchNorm2d, register_norm, resolve_norm

__version__ = "0.1.0"
__all__ = ["add_sn_config", "SwitchNorm2d", "register_norm", "resolve_norm"]
