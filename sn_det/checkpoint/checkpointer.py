"""A DetectionCheckpointer that loads published ImageNet SN models directly and completely,
and refuses a checkpoint that fills too little of the model."""

import os
import re
from typing import List, Sequence, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..layers import SwitchNorm2d
from .convert import (
    SN_AUTHOR,
    CheckpointConversionError,
    convert_published_state_dict,
    converted_checkpoint,
    load_checkpoint_file,
    published_format,
)
from .resume_files import (
    CHECKPOINT_NAME,
    complete_checkpoints,
    is_complete_checkpoint,
    write_text_atomically,
)

__all__ = ["SNDetectionCheckpointer"]

# Model keys that a converted ImageNet SN backbone must fill: the ResNet's stem and stages,
# wherever they live (backbone.bottom_up.* for FPN, backbone.* and roi_heads.res5.* for C4).
_RESNET_KEY = re.compile(r"(^|\.)(stem|res[2-5])\.")

# The default share of what a checkpoint is meant to fill that it must fill (the config's
# MODEL.MIN_LOADED_FRACTION; see SNDetectionCheckpointer).
DEFAULT_MIN_LOADED_FRACTION = 0.5
# Model entries no checkpoint needs to fill: detectron2 initialises them from the config.
_NOT_WEIGHTS = ("pixel_mean", "pixel_std")


def _backbone_keys(model_keys: Sequence[str]) -> List[str]:
    """The model's ImageNet-pretrainable part: its bottom-up network (``backbone.bottom_up.*``
    when the backbone wraps one, as FPN does, else ``backbone.*``), and the C4 ROI head's
    ``res5`` (a stage of the same ResNet)."""
    bottom_up = [k for k in model_keys if k.startswith("backbone.bottom_up.")]
    keys = bottom_up or [k for k in model_keys if k.startswith("backbone.")]
    return keys + [k for k in model_keys if k.startswith("roi_heads.res5.")]


def _part(key: str) -> str:
    """'backbone.bottom_up.res2.0.conv1.weight' -> 'backbone.bottom_up'."""
    return ".".join(key.split(".")[:2])


def _check_model_values(model, filename: str) -> None:
    """A checkpoint's "model" must map names to arrays (fvcore would raise a bare ValueError
    from deep inside the loading)."""
    if not isinstance(model, dict):
        raise CheckpointConversionError(
            f"{filename}: its 'model' entry is a {type(model).__name__}, not a dict of "
            "weight arrays"
        )
    for k, v in model.items():
        if not isinstance(v, (np.ndarray, torch.Tensor)):
            raise CheckpointConversionError(
                f"{filename}: its 'model' entry {k!r} is a {type(v).__name__}, not a weight "
                "array, so this is not a checkpoint of model weights"
            )


def _detectron_pickle(data, filename: str) -> dict:
    """detectron2's reading of a .pkl: its model zoo format as it is, else a Caffe2/Detectron
    model-zoo dict of blobs (matched by name heuristics, momentum buffers dropped)."""
    if not isinstance(data, dict):
        raise CheckpointConversionError(
            f"{filename} holds a {type(data).__name__}, not a checkpoint dict"
        )
    if "model" in data and "__author__" in data:
        return data
    blobs = data.get("blobs", data)
    model = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}


class SNDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also

    - reads every file (``.pth``, ``.pkl``, ``.pyth``, resumed checkpoints) without running
      code from it (``sn_det.checkpoint.load_checkpoint_file``; a file that needs more is
      refused unless SN_DET_TRUST_CHECKPOINTS=1);
    - converts a published ImageNet SN ``.pth`` in memory when ``MODEL.WEIGHTS`` points at
      one (same checks as ``tools/convert_sn_to_d2.py``);
    - for SN backbone checkpoints (converted or published), treats a backbone weight that is
      missing or does not fit as an error instead of detectron2's warning, and refuses a
      checkpoint whose switch weights (with or without the BN term) do not match
      ``MODEL.SN.USING_BN``, naming the key to change;
    - writes the ``last_checkpoint`` tag atomically, and resumes from the newest complete
      checkpoint of the folder, with a warning, when the tag is missing, empty or broken or
      names a file that is not complete (see ``sn_det.checkpoint.resume_files``);
    - refuses a checkpoint that fills less than ``min_loaded_fraction`` of what it is meant
      to fill (by number of values; a checkpoint of another architecture otherwise gives a
      page of warnings and a randomly initialised model). What it is meant to fill: for an
      ImageNet-style backbone (detectron2/Detectron .pkl, pycls .pyth, published SN files,
      any checkpoint loaded by name-matching heuristics) the backbone's bottom-up network and
      a C4 model's res5; for a detectron2 checkpoint, the model parts that the checkpoint
      names (``backbone.bottom_up``, ``roi_heads.box_head``, ...: the first two components
      of its keys), or the whole model if it names none of them. So fine-tuning from
      ImageNet weights, or from a detector with another number of classes, loads as before.
      (The check needs the load's result: a refused model is partly loaded; discard it.)
    Everything else (detectron2 checkpoints) behaves as in detectron2.

    Args:
        min_loaded_fraction: the share below which loading is refused (MODEL.MIN_LOADED_FRACTION;
            0 accepts anything, as detectron2 does).
        fraction_setting: that setting as the user writes it, a format of its value, for the
            refusal (``"train.min_loaded_fraction={}"`` for a LazyConfig command line).
    """

    def __init__(
        self,
        model,
        save_dir="",
        *,
        min_loaded_fraction=None,
        fraction_setting="MODEL.MIN_LOADED_FRACTION {}",
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.min_loaded_fraction = (
            DEFAULT_MIN_LOADED_FRACTION if min_loaded_fraction is None else min_loaded_fraction
        )
        self.fraction_setting = fraction_setting
        self._loading = ""  # the file being loaded, for messages
        self._strict = False  # inside load_weights_strictly

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        # detectron2 rewrites the tag in place: a kill at that moment left it empty.
        if not os.path.isdir(self.save_dir):  # not a local folder: detectron2's way
            return super().tag_last_checkpoint(last_filename_basename)
        write_text_atomically(
            os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename
        )

    def tagged_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names, as detectron2 reads it ("" without a tag),
        unchecked: what a training run has declared finished."""
        if not super().has_checkpoint():
            return ""
        tagged = super().get_checkpoint_file()
        return tagged if os.path.basename(tagged) else ""  # an empty tag reads as the folder

    def has_checkpoint(self) -> bool:
        """Whether there is a checkpoint to resume from: a tag, or a complete checkpoint."""
        return super().has_checkpoint() or bool(complete_checkpoints(self.save_dir))

    def get_checkpoint_file(self) -> str:
        """The checkpoint to resume from: the tagged one if it is complete, else the newest
        complete checkpoint of the folder (with a warning saying why)."""
        tagged = self.tagged_checkpoint_file()
        name = os.path.basename(tagged)
        if CHECKPOINT_NAME.fullmatch(name) and is_complete_checkpoint(tagged):
            return tagged
        if tagged and os.path.isfile(tagged) and not CHECKPOINT_NAME.fullmatch(name):
            return tagged  # a file named by the user: detectron2 loads it as it is
        if not tagged:
            why = "the last_checkpoint tag is missing or empty"
        elif not os.path.isfile(tagged):
            why = f"the last_checkpoint tag names {name!r}, which does not exist"
        else:
            why = f"the tagged {name} is not complete (cut short)"
        found = [n for n in complete_checkpoints(self.save_dir) if n != name]
        if not found:
            return tagged
        self.logger.warning(
            f"{why} in {self.save_dir}: resuming from {found[-1]}, the newest complete checkpoint"
        )
        return os.path.join(self.save_dir, found[-1])

    def _load_file(self, filename):
        # Every format through the one loader that runs no code from the file (detectron2's
        # and fvcore's _load_file unpickle fully); then detectron2's format conventions.
        self._loading = filename
        loaded = load_checkpoint_file(filename)
        if filename.endswith(".pkl"):
            checkpoint = _detectron_pickle(loaded, filename)
            _check_model_values(checkpoint["model"], filename)
            return checkpoint
        if filename.endswith(".pyth"):
            if not isinstance(loaded, dict) or "model_state" not in loaded:
                raise CheckpointConversionError(
                    f"{filename} is not a pycls checkpoint (no 'model_state'), which is what "
                    "detectron2 expects of a .pyth file"
                )
            state = {
                k: v
                for k, v in loaded["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        fmt = published_format(loaded)
        if fmt:
            try:
                state_dict, meta, _ = convert_published_state_dict(loaded)
            except CheckpointConversionError as e:
                raise CheckpointConversionError(f"{filename}: {e}") from None
            self.logger.info(
                f"Converted the published SN ResNet {filename} ({fmt} layout) in memory "
                f"(ResNet-{meta['depth']}, {'with' if meta['using_bn'] else 'without'} BN statistics)"
            )
            return converted_checkpoint(state_dict, meta)
        if not isinstance(loaded, dict):
            raise CheckpointConversionError(
                f"{filename} holds a {type(loaded).__name__}, not a checkpoint dict"
            )
        if "model" not in loaded:
            loaded = {"model": loaded}
        _check_model_values(loaded["model"], filename)
        return loaded

    def _load_model(self, checkpoint):
        is_sn_backbone = checkpoint.get("__author__") == SN_AUTHOR
        if is_sn_backbone:
            self._check_switch_layout(checkpoint["sn_meta"]["using_bn"])
        scope = self._meant_to_fill(checkpoint)
        incompatible = super()._load_model(checkpoint)
        if is_sn_backbone:
            missing = [k for k in incompatible.missing_keys if _RESNET_KEY.search(k)]
            if missing or incompatible.incorrect_shapes:
                bad = missing + [k for k, *_ in incompatible.incorrect_shapes]
                raise CheckpointConversionError(
                    f"the SN checkpoint does not fill the model's ResNet: {len(bad)} weights "
                    f"missing or of another shape, e.g. {bad[:3]} (check MODEL.RESNETS.DEPTH "
                    "and the recipe)"
                )
        if not self._strict:  # strict loading names the missing SN entries instead
            self._check_loaded_fraction(scope, incompatible)
        return incompatible

    def _meant_to_fill(self, checkpoint) -> Tuple[List[str], str]:
        """The model keys ``checkpoint`` is meant to fill (see the class doc) and their
        description; called before loading, which consumes ``checkpoint["model"]``."""
        model_keys = [k for k in self.model.state_dict() if k not in _NOT_WEIGHTS]
        if checkpoint.get("matching_heuristics", False):
            return _backbone_keys(model_keys), "the backbone an ImageNet-style checkpoint fills"
        # Parts named by their first two name components (backbone.bottom_up, roi_heads.
        # box_head, ...): a backbone-only file is then measured on the bottom-up network.
        named = set()
        for k in checkpoint.get("model", {}):
            k = k[len("module.") :] if k.startswith("module.") else k
            named.add(_part(k))
        scoped = [k for k in model_keys if _part(k) in named]
        if scoped:
            parts = sorted({_part(k) for k in scoped})
            shown = ", ".join(parts[:4]) + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")
            return scoped, f"the model parts it names: {shown}"
        return model_keys, "the whole model, since it names none of its modules"

    def _check_loaded_fraction(self, scope: Tuple[List[str], str], incompatible) -> None:
        scope, where = scope
        if not scope or self.min_loaded_fraction <= 0:
            return
        state = self.model.state_dict()
        missing = set(incompatible.missing_keys) | {k for k, *_ in incompatible.incorrect_shapes}
        total = sum(state[k].numel() for k in scope)
        filled = sum(state[k].numel() for k in scope if k not in missing)
        if total and filled < self.min_loaded_fraction * total:
            raise CheckpointConversionError(
                f"{self._loading or 'the checkpoint'} fills only {100.0 * filled / total:.1f}% "
                f"of the model weights it should fill ({filled:,} of {total:,} values in "
                f"{where}), below {self.fraction_setting.format(f'{self.min_loaded_fraction:g}')}, "
                "so it is probably the checkpoint of another architecture; set "
                f"{self.fraction_setting.format(0)} to start from it anyway"
            )

    def load_weights_strictly(self, path: str) -> dict:
        """Load only the model weights of ``path`` (no optimizer or scheduler state) and fail
        when any SN parameter or statistic of the model is missing from it or has another
        shape, where detectron2 would only warn (tools that read the SN layers need them all).
        An ImageNet SN backbone (published or converted) can only fill the ResNet's SN layers,
        so only those are required of it.

        Returns:
            the checkpoint dict (``iteration`` and other extra state included).

        Raises:
            CheckpointConversionError: an unreadable file or an incomplete SN state.
        """
        self.logger.info(f"Loading weights from {path} ...")
        checkpoint = self._load_file(path)
        self._strict = True
        try:
            incompatible = self._load_model(checkpoint)
        finally:
            self._strict = False
        sn_keys = {
            f"{name}.{key}"
            for name, m in self.model.named_modules()
            if isinstance(m, SwitchNorm2d)
            for key in m.state_dict()
        }
        if checkpoint.get("__author__") == SN_AUTHOR:
            sn_keys = {k for k in sn_keys if _RESNET_KEY.search(k)}
        bad = [k for k in incompatible.missing_keys if k in sn_keys]
        bad += [k for k, *_ in incompatible.incorrect_shapes if k in sn_keys]
        if bad:
            raise CheckpointConversionError(
                f"{path} does not hold the SN layers of this model: {len(bad)} entries missing "
                f"or of another shape, e.g. {bad[:3]} (is it the checkpoint of this config?)"
            )
        return checkpoint

    def _check_switch_layout(self, ckpt_using_bn: bool) -> None:
        for name, m in self.model.named_modules():
            if (
                isinstance(m, SwitchNorm2d)
                and _RESNET_KEY.search(name + ".")
                and m.using_bn != ckpt_using_bn
            ):
                what = (
                    "has no BN statistics (2 switch weights, an (8,1) model)"
                    if not ckpt_using_bn
                    else ("mixes a BN term (3 switch weights and running statistics)")
                )
                raise CheckpointConversionError(
                    f"the SN checkpoint {what}, but the model was built with MODEL.SN.USING_BN "
                    f"{m.using_bn}; set MODEL.SN.USING_BN {ckpt_using_bn}"
                )
