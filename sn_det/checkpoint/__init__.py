from .checkpointer import SNDetectionCheckpointer
from .convert import (
    SN_AUTHOR,
    convert_published_state_dict,
    converted_checkpoint,
    published_format,
    save_atomically,
)
from .errors import CheckpointConversionError, UntrustedCheckpointError
from .safe_load import TRUST_ENV, load_checkpoint_file, trust_requested

__all__ = [k for k in globals().keys() if not k.startswith("_")]
