"""A DetectionCheckpointer that loads published ImageNet SN models directly and completely."""

import os
import re

from detectron2.checkpoint import DetectionCheckpointer

from ..layers import SwitchNorm2d
from .convert import (
    SN_AUTHOR,
    CheckpointConversionError,
    convert_published_state_dict,
    converted_checkpoint,
    is_published_sn_state_dict,
    load_checkpoint_file,
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
      names a file that is not complete (see ``sn_det.checkpoint.resume_files``).
    Everything else (detectron2 checkpoints) behaves as in detectron2.
    """

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
        loaded = load_checkpoint_file(filename)
        if filename.endswith(".pkl"):
            return _detectron_pickle(loaded, filename)
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
        if is_published_sn_state_dict(loaded):
            state_dict, meta, _ = convert_published_state_dict(loaded)
            self.logger.info(
                f"Converted the published ImageNet SN model {filename} in memory "
                f"(ResNet-{meta['depth']}, {'with' if meta['using_bn'] else 'without'} BN statistics)"
            )
            return converted_checkpoint(state_dict, meta)
        if not isinstance(loaded, dict):
            raise CheckpointConversionError(
                f"{filename} holds a {type(loaded).__name__}, not a checkpoint dict"
            )
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded

    def _load_model(self, checkpoint):
        is_sn_backbone = checkpoint.get("__author__") == SN_AUTHOR
        if is_sn_backbone:
            self._check_switch_layout(checkpoint["sn_meta"]["using_bn"])
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
        return incompatible

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
        incompatible = self._load_model(checkpoint)
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
