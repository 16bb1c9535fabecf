"""What the study runs: the norms, the study sizes, and one training run per (norm, images per
process, seed), with the config overrides that make it.

Every run trains the same Mask R-CNN (``configs/mask_rcnn_R_18_FPN_norm_study.yaml``) on the
same number of images: iterations = images / total batch. The learning rate is scaled
linearly with the total batch (Goyal et al.'s rule, from the demo's 0.03 at 4 images), and
warm-up and learning-rate steps sit at the demo's shares of the run, so every run passes
through the same phases after the same number of images.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

__all__ = [
    "CONFIG",
    "NORMS",
    "SIZES",
    "Norm",
    "Size",
    "Run",
    "plan_runs",
    "schedule",
]

# The trainers are the source checkout's scripts (projects/SparseSN/train_net.py is not part
# of the installed package), so the study runs from a checkout: the folder above projects/.
_HERE = os.path.dirname(os.path.abspath(__file__))  # projects/NormStudy/norm_study
REPO = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
CONFIG = os.path.join(
    REPO, "projects", "NormStudy", "configs", "mask_rcnn_R_18_FPN_norm_study.yaml"
)

# The demo's schedule as shares of the run: lr 0.03 at 4 images per batch, warm-up over the
# first 100/700 of the run, lr steps (x0.1) at 550/700 and 650/700.
LR_PER_IMAGE = 0.03 / 4
WARMUP_FRACTION = 100 / 700
STEP_FRACTIONS = (550 / 700, 650 / 700)

# The config keys naming the norm of a normalised layer. The box head (2 fc layers) has none.
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_MASK_HEAD.NORM")


@dataclass(frozen=True)
class Norm:
    """One normalisation setting of the study.

    Attributes:
        name: the name in the study's tables (and the norm name where ``layers`` is None).
        layers: the value of each of NORM_KEYS.
        trainer: the training program, relative to the repository root.
        processes: training processes (each with ``images per process`` images).
        switches: whether the layers have SN switch weights (importance ratios).
        note: what the table says about it.
    """

    name: str
    layers: Tuple[str, str, str]
    trainer: str = "tools/train_net.py"
    processes: int = 1
    switches: bool = False
    note: str = ""


SSN_TRAINER = "projects/SparseSN/train_net.py"
NORMS: Dict[str, Norm] = {
    n.name: n
    for n in (
        # FrozenBN from scratch: the frozen statistics are the identity (mean 0, var 1, scale
        # 1, shift 0), so the ResNet is unnormalised; the FPN and mask head get no norm.
        Norm(
            "FrozenBN",
            ("FrozenBN", "", ""),
            note="from scratch: no normalisation at all (identity FrozenBN, no norm in FPN/heads)",
        ),
        Norm("BN", ("BN", "BN", "BN"), note="PyTorch BatchNorm, per-process statistics"),
        Norm("GN", ("GN", "GN", "GN"), note="32 groups"),
        Norm("SN", ("SN", "SN", "SN"), switches=True),
        Norm("SSN", ("SSN", "SSN", "SSN"), trainer=SSN_TRAINER, switches=True),
        Norm(
            "SyncSN",
            ("SyncSN", "SyncSN", "SyncSN"),
            processes=2,
            switches=True,
            note="2 processes, BN term synchronised over both (total batch 2x)",
        ),
    )
}


@dataclass(frozen=True)
class Size:
    """A study size.

    Attributes:
        images: images seen by every run (iterations = images / total batch).
        seeds: seeds run at every (norm, images per process) cell.
        spread_seeds: extra seeds run at the ``spread_ims`` column only, to measure the
            seed-to-seed spread.
        spread_ims: the images-per-process column that gets the extra seeds.
        input_size: the (square) training and test image side, pixels.
        extra_opts: further config overrides of every run.
    """

    images: int
    seeds: Tuple[int, ...]
    spread_seeds: Tuple[int, ...]
    spread_ims: int
    input_size: int = 128
    extra_opts: Tuple[str, ...] = ()


SIZES: Dict[str, Size] = {
    # The 2-core CPU budget (<= 40 minutes with --jobs 2; measured 17.5, see the README):
    # 512 images per run (1.3 passes over the training set), the 2-image column twice.
    "default": Size(images=512, seeds=(0,), spread_seeds=(1,), spread_ims=2),
    # GPUs: the demo's length (2400 images, 6 passes), the 2-image column three times.
    "large": Size(images=2400, seeds=(0,), spread_seeds=(1, 2), spread_ims=2),
    # Few proposals and detections: an untrained model's many low-score detections would make
    # the evaluation the slowest part.
    "tiny": Size(
        images=8,
        seeds=(0,),
        spread_seeds=(),
        spread_ims=1,
        input_size=64,
        extra_opts=("MODEL.RPN.POST_NMS_TOPK_TEST", "16", "TEST.DETECTIONS_PER_IMAGE", "5"),
    ),
}
IMS_PER_PROCESS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Run:
    """One training run: a norm at an images-per-process setting and a seed."""

    norm: Norm
    ims_per_process: int
    seed: int
    images: int
    input_size: int
    extra_opts: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The run's folder name."""
        return f"{self.norm.name}_ipp{self.ims_per_process}_seed{self.seed}"

    @property
    def total_batch(self) -> int:
        return self.ims_per_process * self.norm.processes

    def schedule(self) -> Dict[str, float]:
        return schedule(self.images, self.total_batch)

    def opts(self, device: str, output_dir: str) -> List[str]:
        """The ``KEY VALUE`` overrides of the study config for this run."""
        s = self.schedule()
        opts = []
        for key, value in zip(NORM_KEYS, self.norm.layers):
            opts += [key, value]
        side = str(self.input_size)
        opts += [
            "SOLVER.IMS_PER_BATCH", str(self.total_batch),
            "SOLVER.BASE_LR", repr(s["lr"]),
            "SOLVER.MAX_ITER", str(s["iterations"]),
            "SOLVER.WARMUP_ITERS", str(s["warmup"]),
            "SOLVER.STEPS", str(tuple(s["steps"])),
            "INPUT.MIN_SIZE_TRAIN", f"({side},)",
            "INPUT.MAX_SIZE_TRAIN", side,
            "INPUT.MIN_SIZE_TEST", side,
            "INPUT.MAX_SIZE_TEST", side,
            "SEED", str(self.seed),
            "MODEL.DEVICE", device,
            "OUTPUT_DIR", output_dir,
            *self.extra_opts,
        ]  # fmt: skip
        return opts


def schedule(images: int, total_batch: int) -> Dict[str, float]:
    """The learning-rate schedule of a run seeing ``images`` images in batches of
    ``total_batch``: lr scaled linearly, warm-up and steps at fixed shares of the run.

    Returns:
        dict with ``lr``, ``iterations``, ``warmup`` (iterations) and ``steps`` (iterations).
    """
    iterations = max(1, round(images / total_batch))
    steps = sorted({max(1, round(f * iterations)) for f in STEP_FRACTIONS if f * iterations >= 1})
    return {
        "lr": LR_PER_IMAGE * total_batch,
        "iterations": iterations,
        "warmup": round(WARMUP_FRACTION * iterations),
        "steps": [s for s in steps if s < iterations],
    }


def plan_runs(
    norms: Sequence[str],
    ims_per_process: Sequence[int],
    size: Size,
    seeds: Sequence[int],
    spread_seeds: Sequence[int],
    images: int,
) -> List[Run]:
    """Every run of the study, in order: first the whole grid at ``seeds`` (so a partial
    study already covers every cell), then the extra seeds of the spread column. Within each
    seed, multi-process (SyncSN) runs come first: they need every job slot, and run back to
    back instead of each waiting for the concurrent single-process runs to drain."""

    def block(seed: int, columns: Sequence[int]) -> List[Run]:
        runs = [
            Run(NORMS[norm], ipp, seed, images, size.input_size, size.extra_opts)
            for ipp in columns
            for norm in norms
        ]
        return sorted(runs, key=lambda r: -r.norm.processes)  # stable: keeps the grid order

    runs = []
    for seed in seeds:
        runs += block(seed, ims_per_process)
    if size.spread_ims in ims_per_process:
        for seed in spread_seeds:
            if seed not in seeds:
                runs += block(seed, [size.spread_ims])
    return runs
