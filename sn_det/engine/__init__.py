from .batch_average import batch_average_layers, recompute_sn_batch_statistics
from .evaluation import EVALUATOR_TYPES, build_evaluator
from .hooks import SNBatchAverage, SNImportanceLogger
from .optimizer import build_sn_optimizer, get_sn_optimizer_params, sn_optimizer_params
from .setup import (
    ConfigError,
    add_project_argument,
    default_sn_setup,
    load_cfg,
    project_config_adders,
    selected_project,
    setup_cfg,
    sn_process_setup,
)
from .trainer import Trainer

__all__ = [
    "ConfigError",
    "EVALUATOR_TYPES",
    "SNBatchAverage",
    "SNImportanceLogger",
    "Trainer",
    "add_project_argument",
    "batch_average_layers",
    "build_evaluator",
    "build_sn_optimizer",
    "default_sn_setup",
    "get_sn_optimizer_params",
    "load_cfg",
    "project_config_adders",
    "recompute_sn_batch_statistics",
    "selected_project",
    "setup_cfg",
    "sn_optimizer_params",
    "sn_process_setup",
]
