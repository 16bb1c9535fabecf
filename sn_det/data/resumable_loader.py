"""A training data loader whose position is part of the checkpoint: ``--resume`` continues the
data order where the stopped run left it, batch for batch and augmentation for augmentation.

detectron2's training loader is an infinite seeded stream of dataset indices (TrainingSampler:
``shuffle(range(N)) + shuffle(range(N)) + ...``, every process taking every world_size-th one),
mapped and augmented in DataLoader workers, then grouped by aspect ratio into batches in the
main process. A resumed run rebuilds that stream from its start, so it trains on the first
batches again, and its augmentation draws depend on worker seeds and timing.

This loader keeps detectron2's sampler, mapper and batch contents and changes where the work
is decided:

- batches are formed from the index stream in the main process, before any image is read:
  the aspect-ratio grouping (detectron2's two groups, width > height or not, read from the
  dataset dicts, which is what its grouping reads from the mapped dicts) fills the same
  buckets in the same stream order, so the batches are those detectron2 forms without
  workers, whatever the number of workers;
- each sample is mapped with Python's, NumPy's and torch's generators seeded from (sampler
  seed, the sample's position in the global stream), so its augmentation is a function of its
  position, not of which worker mapped it or whether the run was interrupted;
- the position is the number of batches this process has handed to training, saved by
  :meth:`state_dict` (with the sampler seed, which detectron2 draws at random when
  ``SEED`` < 0); :meth:`load_state_dict` makes the next iteration replay the index stream and
  the grouping (no image is read) up to that batch and continue from there.
"""

import itertools
import logging
import math
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import DatasetFromList, MapDataset

from ..rng import seeded_rng

__all__ = ["ResumableTrainLoader", "aspect_ratio_groups", "index_batches"]

logger = logging.getLogger(__name__)


def aspect_ratio_groups(dataset_dicts: Sequence[dict]) -> np.ndarray:
    """detectron2's AspectRatioGroupedDataset buckets: 0 if width > height, else 1.

    Returns:
        int8 array of shape (len(dataset_dicts),).
    """
    return np.array([0 if d["width"] > d["height"] else 1 for d in dataset_dicts], np.int8)


def index_batches(
    stream: Iterator[int], batch_size: int, groups: Optional[np.ndarray]
) -> Iterator[List[Tuple[int, int]]]:
    """Batches of (position in ``stream``, dataset index), grouped as detectron2 groups.

    Args:
        stream: this process's infinite sampler stream of dataset indices.
        batch_size: images per batch of this process.
        groups: :func:`aspect_ratio_groups` of the dataset, or None for no grouping (the
            stream cut into consecutive batches).
    """
    positioned = enumerate(stream)
    if groups is None:
        while True:
            yield list(itertools.islice(positioned, batch_size))
    buckets = ([], [])
    for pos, idx in positioned:
        bucket = buckets[groups[idx]]
        bucket.append((pos, idx))
        if len(bucket) == batch_size:
            batch = bucket[:]
            del bucket[:]
            yield batch


class _SeededSamples(torchdata.Dataset):
    """Maps ``(global position, dataset index)`` with generators seeded by the position."""

    def __init__(self, mapped: MapDataset, seed: int):
        self.mapped = mapped
        self.seed = seed

    def __len__(self):
        return len(self.mapped)

    def __getitem__(self, key):
        position, idx = key
        sample_seed = int(np.random.SeedSequence([self.seed, position]).generate_state(1)[0])
        with seeded_rng(sample_seed):
            return self.mapped[idx]


class _BatchSampler:
    """The batches of one pass of a torch DataLoader: global (position, index) pairs, from
    batch ``start`` on. Iterated in the main process only."""

    def __init__(self, loader: "ResumableTrainLoader", start: int):
        self.loader = loader
        self.start = start

    def __iter__(self):
        ld = self.loader
        batches = index_batches(iter(ld.sampler), ld.batch_size, ld.groups)
        for batch in itertools.islice(batches, self.start, None):
            # Position in the global stream: this process takes every world_size-th index.
            yield [(pos * ld.world_size + ld.rank, idx) for pos, idx in batch]


class ResumableTrainLoader:
    """An infinite iterable of training batches (lists of mapped dicts), as detectron2's
    ``build_detection_train_loader`` yields, that can continue where a checkpoint left it.

    Iterate it once (detectron2's SimpleTrainer does); a new iterator starts from the
    current position.
    """

    def __init__(
        self,
        dataset_dicts: Sequence[dict],
        mapper,
        sampler,
        batch_size: int,
        *,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        """
        Args:
            dataset_dicts: the training dataset in detectron2's format.
            mapper: dict -> model input (detectron2's DatasetMapper), run in the workers.
            sampler: a detectron2 training sampler (infinite, seeded, rank-sliced), e.g.
                TrainingSampler; its ``_seed`` is saved and restored.
            batch_size: images per batch of this process.
            aspect_ratio_grouping, num_workers: as cfg.DATALOADER.
            rank, world_size: this process's place (only for the per-sample seeds).
        """
        self.groups = aspect_ratio_groups(dataset_dicts) if aspect_ratio_grouping else None
        self.mapped = MapDataset(DatasetFromList(list(dataset_dicts), copy=False), mapper)
        self.sampler = sampler
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.batches_done = 0  # batches handed to the consumer

    @property
    def seed(self) -> int:
        return int(self.sampler._seed)

    def __iter__(self):
        loader = torchdata.DataLoader(
            _SeededSamples(self.mapped, self.seed),
            batch_sampler=_BatchSampler(self, self.batches_done),
            collate_fn=trivial_batch_collator,
            num_workers=self.num_workers,
            worker_init_fn=worker_init_reset_seed,
            # Its own generator: creating the iterator draws a base seed from it, and from
            # torch's global generator otherwise (which would shift the training's draws).
            generator=torch.Generator().manual_seed(self.seed),
        )
        for batch in loader:
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "batches": self.batches_done,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue after ``state["batches"]`` batches of the stream seeded ``state["seed"]``.

        With another batch size or number of processes than the saved run, the same number
        of images of the global stream is skipped (with a warning: batches then differ)."""
        self.sampler._seed = int(state["seed"])
        batches = int(state["batches"])
        saved = state["batch_size"] * state["world_size"]
        if saved != self.batch_size * self.world_size or state["world_size"] != self.world_size:
            batches = math.ceil(batches * saved / (self.batch_size * self.world_size))
            logger.warning(
                f"The checkpoint's data position is for {state['world_size']} process(es) x "
                f"{state['batch_size']} images, this run has {self.world_size} x "
                f"{self.batch_size}: continuing after {batches} batches, the same number of "
                "images, but not with the same batches."
            )
        self.batches_done = batches
