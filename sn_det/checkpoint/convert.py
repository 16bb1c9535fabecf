"""Convert the authors' published ImageNet SN checkpoints to detectron2's backbone layout.

Published layout (a DataParallel ResNet-v1, stride on the 3x3 conv)::

    module.conv1.weight                              -> stem.conv1.weight
    module.sn1.{weight,bias,...}                     -> stem.conv1.norm.*
    module.layer{L}.{i}.conv{k}.weight               -> res{L+1}.{i}.conv{k}.weight
    module.layer{L}.{i}.sn{k}.*                      -> res{L+1}.{i}.conv{k}.norm.*
    module.layer{L}.0.downsample.0.weight            -> res{L+1}.0.shortcut.weight
    module.layer{L}.0.downsample.1.*                 -> res{L+1}.0.shortcut.norm.*
    module.fc.{weight,bias}                          -> dropped (ImageNet classifier)

SN weight/bias (1, C, 1, 1) and running stats (1, C, 1) become (C,). The result carries
``matching_heuristics``, so detectron2 matches ``res5.*`` to ``backbone.bottom_up.res5.*``
(FPN) or ``roi_heads.res5.*`` (C4) alike.

The authors' Detectron.pytorch detection code read the same networks in another layout,
written by their ``tools/convert.py`` (``{'model': {...}}``, tensors unchanged), which is the
only form of their (8,2) and (8,1) FPN backbones::

    {P}res1.conv1.weight, {P}res1.sn1.*              <- module.conv1.weight, module.sn1.*
    {P}res{L+1}.{rest}                               <- module.layer{L}.{rest}
    {P}classifier.{weight,bias}                      <- module.fc.{weight,bias}

with P = ``Conv_Body.conv_body.`` (written with --use-FPN) or ``Conv_Body.`` (without).
Such a file is renamed back to the ImageNet layout and converted by the same code, so both
forms of one network give the same detectron2 checkpoint, tensor for tensor.
"""

import logging
import os
import pickle
import re
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

from ..atomic_files import new_temp_file
from .errors import CheckpointConversionError
from .safe_load import load_checkpoint_file

__all__ = [
    "CheckpointConversionError",
    "SN_AUTHOR",
    "is_published_sn_state_dict",
    "published_format",
    "load_checkpoint_file",
    "convert_published_state_dict",
    "converted_checkpoint",
    "save_atomically",
]

logger = logging.getLogger(__name__)

SN_AUTHOR = "sn_det (converted ImageNet SN model)"
SN_PARAMS = ("weight", "bias", "mean_weight", "var_weight", "running_mean", "running_var")
# Blocks per stage -> (depth, bottleneck?)
DEPTHS = {
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
}

_KEY = re.compile(
    r"^(?:conv1\.weight|sn1\.(?P<stem_sn>\w+)"
    r"|layer(?P<layer>[1-4])\.(?P<block>\d+)\."
    r"(?:conv(?P<conv>[1-3])\.weight|sn(?P<sn>[1-3])\.(?P<sn_param>\w+)"
    r"|downsample\.0\.weight|downsample\.1\.(?P<ds_param>\w+)))$"
)


# Key prefixes of the authors' Detectron.pytorch backbones, longest first (see the module doc).
DETECTRON_PYTORCH_PREFIXES = ("Conv_Body.conv_body.", "Conv_Body.")
_DETECTRON_PYTORCH_KEY = re.compile(r"^res(?P<stage>[1-5])\.(?P<rest>.+)$")


def _imagenet_key_of_detectron_pytorch(key: str) -> str:
    """'res1.conv1.weight' -> 'conv1.weight', 'res3.0.sn1.bias' -> 'layer2.0.sn1.bias',
    'classifier.weight' -> 'fc.weight' (the inverse of the authors' tools/convert.py).
    Keys of no ResNet part come back unchanged, so the converter names them as unknown."""
    if key.startswith("classifier."):
        return "fc." + key[len("classifier.") :]
    m = _DETECTRON_PYTORCH_KEY.match(key)
    if m is None:
        return key
    stage, rest = int(m.group("stage")), m.group("rest")
    return rest if stage == 1 else f"layer{stage - 1}.{rest}"


def _published_state_dict(obj) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], str]:
    """The published network inside a loaded file, in the ImageNet layout without the
    DataParallel prefix.

    Returns:
        (state dict, {its key: the key as written in the file}, format), format being
        "imagenet", "detectron.pytorch FPN" or "detectron.pytorch"; ({}, {}, "") for anything
        else.
    """
    if not isinstance(obj, dict):
        return {}, {}, ""
    model = obj.get("model")
    if isinstance(model, dict) and model and all(isinstance(k, str) for k in model):
        for prefix in DETECTRON_PYTORCH_PREFIXES:
            if f"{prefix}res1.conv1.weight" in model:
                out, names = OrderedDict(), {}
                for k, v in model.items():
                    # A key outside the prefix stays as it is: the converter then names it.
                    new = _imagenet_key_of_detectron_pytorch(
                        k[len(prefix) :] if k.startswith(prefix) else k
                    )
                    out[new], names[new] = v, k
                fmt = "detectron.pytorch FPN" if prefix.count(".") == 2 else "detectron.pytorch"
                return out, names, fmt
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) for k in sd):
        return {}, {}, ""
    if all(k.startswith("module.") for k in sd):
        out = OrderedDict((k[len("module.") :], v) for k, v in sd.items())
        return out, {k: "module." + k for k in out}, "imagenet"
    return sd, {k: k for k in sd}, "imagenet"


def is_published_sn_state_dict(obj) -> bool:
    """Whether a loaded file looks like a published SN ResNet: an ImageNet checkpoint, or a
    backbone in the authors' Detectron.pytorch layout."""
    return bool(published_format(obj))


def published_format(obj) -> str:
    """The layout of a published SN ResNet: "imagenet", "detectron.pytorch FPN" or
    "detectron.pytorch" (see the module doc); "" when ``obj`` is not one."""
    sd, _, fmt = _published_state_dict(obj)
    return fmt if "conv1.weight" in sd and "sn1.mean_weight" in sd else ""


def _target_key(key: str, old: str) -> Tuple[str, str]:
    """Published key (without 'module.') -> (detectron2 key, kind) with kind in conv/sn/drop.
    ``old`` is the key as written in the file, for the error message."""
    if key.startswith("fc."):
        return "", "drop"
    m = _KEY.match(key)
    if m is None:
        raise CheckpointConversionError(f"unknown key {old!r} in the checkpoint")
    if key == "conv1.weight":
        return "stem.conv1.weight", "conv"
    if m.group("stem_sn"):
        return f"stem.conv1.norm.{m.group('stem_sn')}", "sn"
    stage = f"res{int(m.group('layer')) + 1}.{m.group('block')}"
    if m.group("conv"):
        return f"{stage}.conv{m.group('conv')}.weight", "conv"
    if m.group("sn"):
        return f"{stage}.conv{m.group('sn')}.norm.{m.group('sn_param')}", "sn"
    if m.group("ds_param"):
        return f"{stage}.shortcut.norm.{m.group('ds_param')}", "sn"
    return f"{stage}.shortcut.weight", "conv"


def convert_published_state_dict(obj) -> Tuple["OrderedDict[str, torch.Tensor]", dict, List[str]]:
    """Convert a loaded published checkpoint (or its state dict).

    Returns:
        (detectron2 state dict, meta {"depth", "using_bn"}, report lines "old -> new").

    Raises:
        CheckpointConversionError: not an SN checkpoint, unknown keys, shapes that do not fit,
            or a mix of layers with and without BN statistics.
    """
    sd, names, _ = _published_state_dict(obj)
    if not is_published_sn_state_dict(obj):
        raise CheckpointConversionError(
            "this is not a published SN ResNet checkpoint (expected an ImageNet 'state_dict' "
            "with 'module.conv1.weight' and 'module.sn1.*' keys, or a Detectron.pytorch "
            "'model' with 'Conv_Body.[conv_body.]res1.conv1.weight' and 'res1.sn1.*' keys)"
        )
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    report: List[str] = []
    switch_sizes = set()
    for key, value in sd.items():
        old = names[key]  # as written in the file, for messages
        if not isinstance(value, torch.Tensor):
            raise CheckpointConversionError(f"{old!r} holds a {type(value).__name__}, not a tensor")
        new, kind = _target_key(key, old)
        if kind == "drop":
            report.append(f"{old} -> (dropped: ImageNet classifier)")
            continue
        param = new.rsplit(".", 1)[1]
        if kind == "conv":
            if value.dim() != 4:
                raise CheckpointConversionError(
                    f"{old!r} has shape {tuple(value.shape)}; a conv weight is 4-d"
                )
        elif param in ("mean_weight", "var_weight"):
            if value.dim() != 1 or value.numel() not in (2, 3):
                raise CheckpointConversionError(
                    f"{old!r} has shape {tuple(value.shape)}; switch weights have 2 or 3 entries"
                )
            switch_sizes.add(value.numel())
        elif param in ("weight", "bias", "running_mean", "running_var"):
            want = (1, -1, 1, 1) if param in ("weight", "bias") else (1, -1, 1)
            if value.dim() != len(want) or any(
                w == 1 and s != 1 for w, s in zip(want, value.shape)
            ):
                raise CheckpointConversionError(
                    f"{old!r} has shape {tuple(value.shape)}; expected {tuple('C' if w < 0 else w for w in want)}"
                )
            value = value.reshape(-1)
        else:
            raise CheckpointConversionError(f"unknown SN parameter in key {old!r}")
        if new in out:
            raise CheckpointConversionError(f"two keys convert to {new!r}")
        out[new] = value.detach().clone()
        report.append(f"{old} -> {new}")

    if len(switch_sizes) != 1:
        raise CheckpointConversionError(
            "the checkpoint mixes SN layers with 2 and 3 switch weights; cannot convert"
        )
    using_bn = switch_sizes.pop() == 3
    if not using_bn and any(k.rsplit(".", 1)[1].startswith("running_") for k in out):
        raise CheckpointConversionError("SN layers without a BN term carry running statistics")
    # Every SN layer complete: the affine, the switch logits, and with BN both statistics.
    required = SN_PARAMS if using_bn else SN_PARAMS[:4]
    norm_layers = sorted({k.rsplit(".", 1)[0] for k in out if ".norm." in k})
    for layer in norm_layers:
        for p in required:
            if f"{layer}.{p}" not in out:
                raise CheckpointConversionError(f"SN layer {layer!r} lacks {p!r}")

    blocks = [len({k.split(".")[1] for k in out if k.startswith(f"res{s}.")}) for s in range(2, 6)]
    bottleneck = any(".conv3." in k for k in out)
    depth = DEPTHS.get((tuple(blocks), bottleneck))
    if depth is None:
        raise CheckpointConversionError(
            f"unsupported ResNet: blocks per stage {blocks}, {'bottleneck' if bottleneck else 'basic'} blocks"
        )
    return out, {"depth": depth, "using_bn": using_bn}, report


def converted_checkpoint(state_dict, meta) -> dict:
    """The dict to save, or to hand to a detectron2 checkpointer."""
    return {
        "model": state_dict,
        "__author__": SN_AUTHOR,
        "matching_heuristics": True,
        "sn_meta": dict(meta),
    }


def save_atomically(obj, dst: str) -> None:
    """Write a checkpoint dict to ``dst`` through a temporary file next to it and a rename, so
    that ``dst`` is never half-written.

    The format follows detectron2's convention for the name: ``.pkl`` is a pickled dict whose
    ``"model"`` maps names to numpy arrays (what detectron2's DetectionCheckpointer reads with
    pickle; ``"__author__"`` and ``"matching_heuristics"`` as in ``obj``), anything else is
    ``torch.save``.
    """
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    as_pickle = dst.endswith(".pkl")
    if as_pickle:
        obj = dict(obj)
        obj["model"] = {k: v.detach().cpu().numpy() for k, v in obj["model"].items()}
    fd, tmp = new_temp_file(folder, suffix=os.path.splitext(dst)[1])
    try:
        with os.fdopen(fd, "wb") as f:
            if as_pickle:
                # Protocol 4: numpy arrays pickle through _reconstruct (protocol 5 names
                # numpy._frombuffer), which sn_det's data-only unpickler admits.
                pickle.dump(obj, f, protocol=4)
            else:
                torch.save(obj, f)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
