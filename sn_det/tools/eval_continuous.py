"""Evaluate every checkpoint of a training run as it appears (the seed's --load_dir).

Watches DIR (a training OUTPUT_DIR) and evaluates each finished checkpoint once, in
iteration order, including checkpoints written while this runs. A checkpoint counts as
finished when detectron2's bookkeeping says so: DIR/last_checkpoint names it or a later
one (detectron2 writes that tag only after the file is complete), so a file still being
written is never read.

For each evaluated checkpoint:
  DIR/continuous_eval.jsonl      one JSON line: {"checkpoint", "iteration", "metrics"}
  DIR/continuous_eval/           TensorBoard events (metrics at the checkpoint's iteration),
                                 COCOEvaluator outputs and the log
A checkpoint that cannot be loaded (truncated, corrupt, refused as unsafe, of another
model) is recorded as failed, {"checkpoint", "iteration": null, "failed": reason}, and the
next one is evaluated. After a restart, checkpoints already in the JSON lines, evaluated or
failed, are skipped. Stops after model_final.pth, or after --timeout seconds without a new
checkpoint.
"""

import argparse
import json
import math
import os
import sys
import time

from detectron2.evaluation.testing import flatten_results_dict

from sn_det.checkpoint import CheckpointConversionError, SNDetectionCheckpointer
from sn_det.checkpoint.resume_files import CHECKPOINT_NAME, checkpoint_order
from sn_det.engine import (
    ConfigError,
    Trainer,
    add_project_argument,
    default_sn_setup,
    project_config_adders,
    selected_project,
    setup_cfg,
)
from sn_det.projects import project_trainer

EXAMPLES = """examples:
  # alongside a training run (in another shell):
  tools/eval_continuous.py --config-file configs/quick_schedules/mask_rcnn_sn_instant_test.yaml \\
      --load-dir output/instant_test
  # give up when no new checkpoint arrives for an hour:
  tools/eval_continuous.py --config-file CFG --load-dir DIR --timeout 3600
"""

FINAL = "model_final.pth"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, help="the training run's config")
    parser.add_argument("--load-dir", required=True, help="the training run's OUTPUT_DIR")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop after this many seconds without a new checkpoint (default: wait for "
        "model_final.pth)",
    )
    parser.add_argument(
        "--poll", type=float, default=10.0, help="seconds between looks at the folder"
    )
    add_project_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def finished_checkpoints(checkpointer):
    """Checkpoint file names in ``checkpointer.save_dir`` that are completely written, in order.

    detectron2's Checkpointer saves model_XXXXXXX.pth, then writes its name to
    ``last_checkpoint`` (read back by ``get_checkpoint_file``); checkpoints are saved one
    after another in iteration order, so every checkpoint up to the tagged one is complete
    and any later one may still be in progress. A tag being rewritten reads as no name.
    """
    last = os.path.basename(checkpointer.tagged_checkpoint_file())
    if not CHECKPOINT_NAME.fullmatch(last):
        return []
    names = [os.path.basename(p) for p in checkpointer.get_all_checkpoint_files()]
    names = [n for n in names if CHECKPOINT_NAME.fullmatch(n)]
    return sorted(
        (n for n in names if checkpoint_order(n) <= checkpoint_order(last)), key=checkpoint_order
    )


def read_done(jsonl: str):
    """Checkpoint names already evaluated or failed. A last line cut off by a crash is
    dropped (and cut from the file) so that checkpoint is evaluated again."""
    if not os.path.exists(jsonl):
        return set()
    with open(jsonl, "rb") as f:
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        print(f"{jsonl}: dropping an incomplete last line", flush=True)
        with open(jsonl, "wb") as f:
            f.write(complete)
    return {json.loads(line)["checkpoint"] for line in complete.decode().splitlines() if line}


def _finite_or_none(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


class ContinuousEvaluator:
    """Evaluates checkpoints of ``load_dir`` with one model and records the results.

    Args:
        trainer_cls: the trainer whose model, evaluation and batch-average loader the
            training run had (a project's, e.g. SNSegTrainer with its multi-scale test).
    """

    def __init__(self, cfg, load_dir: str, trainer_cls=Trainer):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        self.trainer_cls = trainer_cls
        self.load_dir = load_dir
        self.jsonl = os.path.join(load_dir, "continuous_eval.jsonl")
        self.model = trainer_cls.build_model(cfg)
        # Reads load_dir's checkpoints and their last_checkpoint tag; never writes there.
        self.checkpointer = SNDetectionCheckpointer(
            self.model, save_dir=load_dir, save_to_disk=False
        )
        self.tensorboard = SummaryWriter(cfg.OUTPUT_DIR)
        # One training-data iterator for every checkpoint's batch averaging (if enabled).
        self.batch_average_data = (
            iter(trainer_cls.build_batch_average_loader(cfg))
            if cfg.TEST.SN_BATCH_AVG.ENABLED
            else None
        )

    def _record(self, record: dict) -> None:
        with open(self.jsonl, "a") as f:  # one write of one line, then to disk
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def evaluate(self, name: str) -> dict:
        """Evaluate one checkpoint and record it; a checkpoint that cannot be loaded is
        recorded as failed, with the reason, and its record returned (no "metrics")."""
        path = os.path.join(self.load_dir, name)
        try:
            checkpoint = self.checkpointer.load_weights_strictly(path)
        except CheckpointConversionError as e:
            record = {"checkpoint": name, "iteration": None, "failed": str(e)}
            self._record(record)
            return record
        iteration = checkpoint.get("iteration")
        results = self.trainer_cls.test_with_sn_batch_average(
            self.cfg, self.model, self.batch_average_data
        )
        metrics = {k: _finite_or_none(v) for k, v in flatten_results_dict(results).items()}
        self._record({"checkpoint": name, "iteration": iteration, "metrics": metrics})
        if iteration is not None:
            for key, value in metrics.items():
                if value is not None:
                    self.tensorboard.add_scalar(key, value, iteration)
            self.tensorboard.flush()
        return {"iteration": iteration, **metrics}


def _summary(record: dict) -> str:
    shown = [k for k in ("bbox/AP", "segm/AP") if record.get(k) is not None]
    return ", ".join(f"{k} {record[k]:.2f}" for k in shown) or "no AP"


def run(args) -> int:
    load_dir = args.load_dir
    if not os.path.isdir(load_dir):
        raise ConfigError(f"--load-dir {load_dir} is not a folder")
    if args.timeout is not None and args.timeout < 0:
        raise ConfigError(f"--timeout must be >= 0 seconds, got {args.timeout}")
    if args.poll <= 0:
        raise ConfigError(f"--poll must be > 0 seconds, got {args.poll}")
    # Evaluation outputs go to a folder of their own, never over the training run's files;
    # the weights come from the checkpoints, not from MODEL.WEIGHTS.
    args.opts = list(args.opts) + [
        "MODEL.WEIGHTS",
        "",
        "OUTPUT_DIR",
        os.path.join(load_dir, "continuous_eval"),
    ]
    args.resume = False
    args.eval_only = True
    cfg = setup_cfg(args, default=False, config_adders=project_config_adders(args))
    trainer_cls = project_trainer(selected_project(args))
    if not cfg.DATASETS.TEST:
        raise ConfigError("DATASETS.TEST is empty: nothing to evaluate the checkpoints on")
    try:
        trainer_cls.check_evaluators(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    default_sn_setup(cfg, args)
    evaluator = ContinuousEvaluator(cfg, load_dir, trainer_cls)
    done = read_done(evaluator.jsonl)
    if done:
        print(
            f"already evaluated (skipped): {', '.join(sorted(done, key=checkpoint_order))}",
            flush=True,
        )
    last_new = time.monotonic()
    last_notice = -math.inf
    while True:
        for name in finished_checkpoints(evaluator.checkpointer):
            if name in done:
                continue
            print(f"evaluating {name} ...", flush=True)
            record = evaluator.evaluate(name)
            done.add(name)
            last_new = time.monotonic()
            if "failed" in record:
                print(f"{name} failed (recorded, not retried): {record['failed']}", flush=True)
            else:
                print(f"{name} (iteration {record['iteration']}): {_summary(record)}", flush=True)
        if FINAL in done:
            print(f"{FINAL} is evaluated; results in {evaluator.jsonl}", flush=True)
            return 0
        waited = time.monotonic() - last_new
        if args.timeout is not None and waited >= args.timeout:
            print(
                f"no new checkpoint in {load_dir} for {waited:.0f} s (--timeout {args.timeout:g}); "
                f"stopping with {len(done)} evaluated",
                flush=True,
            )
            return 0
        if time.monotonic() - last_notice >= 30:
            limit = f", timeout {args.timeout:g} s" if args.timeout is not None else ""
            print(
                f"waiting for a new checkpoint in {load_dir} ({waited:.0f} s so far{limit})",
                flush=True,
            )
            last_notice = time.monotonic()
        time.sleep(args.poll)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ConfigError, CheckpointConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; evaluated checkpoints are in the JSON lines", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
