from .checkpointer import SNDetectionCheckpointer
from .convert import (
    SN_AUTHOR,
    CheckpointConversionError,
    convert_published_state_dict,
    converted_checkpoint,
    load_checkpoint_file,
    save_atomically,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
