"""Loading checkpoint files without running code from them.

A pickle can name any importable callable and have it called while loading (``__reduce__``),
so an untrusted checkpoint is untrusted code. Every file sn_det reads goes through
:func:`load_checkpoint_file`:

- torch files (``.pth``, ``.pyth``, ...): ``torch.load(weights_only=True)`` only: tensors,
  containers, numbers and strings, which is all sn_det's own and the authors' files hold;
- ``.pkl`` (detectron2/Detectron model zoo, pickled dicts of numpy arrays): a restricted
  unpickler that admits containers, numbers, strings and numpy arrays, nothing else;
- anything else is refused in one sentence naming the file.

A user who trusts a legacy file that needs more opts in explicitly, with the environment
variable ``SN_DET_TRUST_CHECKPOINTS=1`` (or a tool's ``--trust-checkpoint``): that file is
then fully unpickled, which can run arbitrary code.
"""

import logging
import os
import pickle

import torch

from .errors import CheckpointConversionError, UntrustedCheckpointError

logger = logging.getLogger(__name__)

__all__ = ["TRUST_ENV", "UntrustedCheckpointError", "load_checkpoint_file", "trust_requested"]

TRUST_ENV = "SN_DET_TRUST_CHECKPOINTS"

# (module, name) a restricted .pkl may reference: what rebuilding numpy arrays and ordered
# dicts needs (numpy 1 and 2 module paths), and codecs.encode, which Python 2 era pickles use
# for byte strings. None of these can do anything but build data.
_PKL_GLOBALS = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
    # plain data types a pickle may name as globals (protocol 2 writes sets this way)
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("builtins", "slice"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _PKL_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it references {module}.{name}")


def trust_requested() -> bool:
    """Whether the user opted in to fully unpickling checkpoints (SN_DET_TRUST_CHECKPOINTS=1)."""
    return os.environ.get(TRUST_ENV) == "1"


def _refuse(path: str, why) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f"{path} holds Python objects beyond tensors, arrays and containers ({why}), and "
        f"loading it could run code: refused; if you trust this file, set {TRUST_ENV}=1 "
        "to load it anyway (convert_sn_to_d2 and visualize_sn also take --trust-checkpoint)"
    )


def _weights_only_reason(message: str, limit: int = 200) -> str:
    """What torch's weights_only unpickler objected to, without its advice (which suggests
    weights_only=False), cut at a word boundary."""
    reason = message.split("WeightsUnpickler error:", 1)[-1].strip()
    reason = reason.splitlines()[0].strip() if reason else message.strip()
    if len(reason) > limit:
        reason = reason[:limit].rsplit(" ", 1)[0] + " ..."
    return reason


def _not_a_checkpoint(path: str, e: Exception) -> CheckpointConversionError:
    return CheckpointConversionError(
        f"{path} is not a readable checkpoint ({type(e).__name__}: {e})"
    )


def _load_pickle(path: str, trust: bool):
    with open(path, "rb") as f:
        try:
            return _DataOnlyUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            if not str(e).startswith("it references"):
                raise _not_a_checkpoint(path, e) from None
            if not trust:
                raise _refuse(path, e) from None
        except Exception as e:  # truncated files, text files: EOFError, ValueError, ...
            raise _not_a_checkpoint(path, e) from None
    logger.warning(f"{path}: fully unpickling a file that references code ({TRUST_ENV}=1)")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_checkpoint_file(path: str, trust=None):
    """Load a checkpoint file on the CPU without running code from it (see the module doc).

    Args:
        path: a local file: a torch file, or a ``.pkl`` pickle of numpy arrays.
        trust: fully unpickle files that need it; None reads SN_DET_TRUST_CHECKPOINTS.

    Raises:
        CheckpointConversionError: a missing file, or one that is not a checkpoint.
        UntrustedCheckpointError: a file that references code, without the opt-in.
    """
    if os.path.isdir(path):
        raise CheckpointConversionError(f"{path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointConversionError(f"{path} does not exist")
    trust = trust_requested() if trust is None else trust
    if path.endswith(".pkl"):
        return _load_pickle(path, trust)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "weights_only" not in message and "Weights only" not in message:
            # Not a torch file: a plain pickle under another name gets the .pkl rules.
            return _load_pickle(path, trust)
        if not trust:
            raise _refuse(path, _weights_only_reason(message)) from None
    except Exception as e:  # zip/format errors come as several exception types
        raise _not_a_checkpoint(path, e) from None
    logger.warning(f"{path}: fully unpickling a file that references code ({TRUST_ENV}=1)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise _not_a_checkpoint(path, e) from None
