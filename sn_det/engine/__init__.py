from .optimizer import build_sn_optimizer, get_sn_optimizer_params
from .setup import ConfigError, setup_cfg
from .trainer import Trainer

__all__ = ["ConfigError", "Trainer", "build_sn_optimizer", "get_sn_optimizer_params", "setup_cfg"]
