"""The errors of checkpoint loading and conversion: each message is one sentence for the user
(the command-line tools print it and exit 2)."""

__all__ = ["CheckpointConversionError", "UntrustedCheckpointError"]


class CheckpointConversionError(ValueError):
    """A checkpoint that cannot be converted or loaded as asked."""


class UntrustedCheckpointError(CheckpointConversionError):
    """A checkpoint that could run code when loaded, refused without the user's opt-in."""
