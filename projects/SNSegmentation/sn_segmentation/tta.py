"""Multi-scale and flip inference for semantic segmentation (detectron2 has it for R-CNN
only: ``GeneralizedRCNNWithTTA``)."""

from typing import Dict, List, Optional

import torch
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """A ``SemanticSegmentor`` evaluated on several resized (and optionally flipped) copies of
    each image, whose softmax probabilities are averaged at the original size.

    The copies are those of detectron2's ``DatasetMapperTTA``: the short side resized to each
    of ``TEST.AUG.MIN_SIZES`` (the long side at most ``TEST.AUG.MAX_SIZE``), each also
    flipped horizontally when ``TEST.AUG.FLIP``. The model resizes every prediction to the
    image's original ``height`` x ``width``; flipped ones are flipped back before averaging.
    Probabilities, not logits, are averaged, as in the SN authors' multi-scale evaluation.

    Output: ``[{"sem_seg": (K, height, width) tensor}]`` of averaged probabilities, the format
    ``SemSegEvaluator`` reads (it takes the argmax).
    """

    def __init__(self, cfg, model: nn.Module, tta_mapper=None, batch_size: int = 1):
        """
        Args:
            cfg: reads ``TEST.AUG.MIN_SIZES``, ``MAX_SIZE`` and ``FLIP`` unless ``tta_mapper``
                is given.
            model: a SemanticSegmentor (a DistributedDataParallel wrapper is unwrapped).
            tta_mapper: dataset dict -> list of augmented dicts, each with "transforms";
                default ``DatasetMapperTTA(cfg)``.
            batch_size: copies of one image run through the model at a time.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        # Start in the model's mode: inference_on_dataset restores the wrapper's mode after
        # evaluating, which would otherwise switch an eval-mode model to training.
        self.train(model.training)
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """
        Args:
            batched_inputs: model inputs of the test loader: "image" (C, H, W) as resized by
                the test mapper, "height" and "width" of the original image.
        """
        return [{"sem_seg": self._average_probabilities(x)} for x in batched_inputs]

    def _average_probabilities(self, inputs: Dict) -> torch.Tensor:
        augmented = self.tta_mapper(inputs)
        total: Optional[torch.Tensor] = None
        for start in range(0, len(augmented), self.batch_size):
            chunk = augmented[start : start + self.batch_size]
            for aug, out in zip(chunk, self.model(chunk)):
                prob = out["sem_seg"].softmax(dim=0)  # (K, height, width)
                if any(isinstance(t, HFlipTransform) for t in aug["transforms"].transforms):
                    prob = prob.flip(dims=[2])
                total = prob if total is None else total + prob
        return total / len(augmented)
