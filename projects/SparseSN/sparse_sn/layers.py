"""Sparse Switchable Normalization: SN whose mixing weights are sparsestmax of the switch
logits instead of softmax, so that as the radius grows every layer ends up choosing exactly
one of IN, LN and BN (for the mean and for the variance separately).

The layers are sn_det's SwitchNorm2d/SyncSwitchNorm2d in probability mode
(``switch_probabilities``): statistics, kernels (C++ on CPU, Triton on CUDA), running
statistics, synchronization and checkpoints are SN's; only the mixing weights differ.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sn_det.layers import SwitchNorm2d, SyncSwitchNorm2d

from .sparsestmax import sparsestmax

__all__ = ["SparseSwitchNorm2d", "SyncSparseSwitchNorm2d", "TERMS"]

TERMS = ("IN", "LN", "BN")


class _SparseSwitch:
    """The sparse mixing, shared by the plain and the synchronized layer.

    Buffers (saved in checkpoints): ``radius`` (0-d), the current sparsestmax radius, set by
    the training schedule (hooks.SparsestMaxRadius); ``mean_choice``/``var_choice`` (0-d long),
    -1 while the choice is open, else the index of the term chosen once sparsestmax became
    one-hot. A fixed choice is final, as in the authors' code: its logits get no gradient.
    """

    switch_probabilities = True

    def _init_sparse(self):
        self.register_buffer("radius", torch.zeros(()))
        self.register_buffer("mean_choice", torch.full((), -1, dtype=torch.long))
        self.register_buffer("var_choice", torch.full((), -1, dtype=torch.long))
        self._fixed = None  # host copy of the two choices: no GPU sync per forward

    def _fixed_choices(self) -> Tuple[int, int]:
        if self._fixed is None:
            self._fixed = (int(self.mean_choice), int(self.var_choice))
        return self._fixed

    def _one(self, logits: Tensor, choice: int) -> Tensor:
        if choice >= 0:
            # Filled on the device: a tensor made from the Python int would be a blocking
            # host-to-device copy in every forward.
            one_hot = logits.new_zeros(logits.numel())
            one_hot[choice] = 1.0
            return one_hot
        return sparsestmax(logits, self.radius.to(logits.dtype))

    def switch_weights(self) -> Tuple[Tensor, Tensor]:
        """The current mixing probabilities (mean, var), each (K,), differentiable."""
        mean_choice, var_choice = self._fixed_choices()
        return self._one(self.mean_weight, mean_choice), self._one(self.var_weight, var_choice)

    def _switch_inputs(self):
        return self.switch_weights()

    @torch.no_grad()
    def fix_one_hot_choices(self) -> int:
        """Fix every choice whose sparsestmax output is one-hot now. Returns how many
        choices (of 2) are fixed after the call."""
        for logits, choice in (
            (self.mean_weight, self.mean_choice),
            (self.var_weight, self.var_choice),
        ):
            if int(choice) < 0:
                p = sparsestmax(logits.detach(), self.radius.to(logits.dtype))
                if float(p.max()) >= 1.0 - 1e-4:  # one-hot up to float32 rounding of r
                    choice.fill_(int(p.argmax()))
        self._fixed = None
        return sum(c >= 0 for c in self._fixed_choices())

    def choices(self) -> Tuple[Optional[str], Optional[str]]:
        """The fixed (mean, var) terms by name, None where still open."""
        return tuple(TERMS[c] if c >= 0 else None for c in self._fixed_choices())

    def forward(self, x: Tensor) -> Tensor:
        # Both choices fixed on BN, outside training: BN with the running statistics, one
        # pass over x with no statistics taken (the unused IN/LN moments are skipped).
        if (
            self.using_bn
            and (not self.training or self.frozen)
            and self._fixed_choices() == (2, 2)
            and x.dim() == 4
        ):
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)

    def _forward_scripted(self, x: Tensor) -> Tensor:
        raise RuntimeError("Sparse SN layers cannot be scripted with TorchScript (trace them)")

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._fixed = None
        # An SN checkpoint (an ImageNet SN backbone, say) has no sparse state: start open.
        for name in ("radius", "mean_choice", "var_choice"):
            if prefix + name in missing_keys and prefix + "mean_weight" in state_dict:
                missing_keys.remove(prefix + name)

    def extra_repr(self) -> str:
        mean, var = self.choices()
        return super().extra_repr() + f", radius={float(self.radius):.4g}, choice=({mean}, {var})"


class SparseSwitchNorm2d(_SparseSwitch, SwitchNorm2d):
    """:class:`sn_det.layers.SwitchNorm2d` with sparsestmax mixing weights (same arguments)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparse()


class SyncSparseSwitchNorm2d(_SparseSwitch, SyncSwitchNorm2d):
    """:class:`sn_det.layers.SyncSwitchNorm2d` with sparsestmax mixing weights."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_sparse()
