"""The main job: train an SN Mask R-CNN on the embedded synthetic data on the CPU, evaluate it
with COCOEvaluator, and write what a person wants to look at.

Output folder (default output/demo):
  metrics.json            detectron2's training metrics, one JSON line per 20 iterations
  final_metrics.json      box and mask AP of the final model on sn_synth_val
  inference/              COCOEvaluator's predictions (coco_instances_results.json)
  predictions/*.png       ground truth (left) and predictions (right) for a few val images
  loss_curve.png          the training losses
  model_final.pth         the trained weights (usable with tools/train_net.py --eval-only)
"""

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer

from sn_det import model_zoo
from sn_det.engine import ConfigError, Trainer, setup_cfg

DEFAULT_CONFIG = model_zoo.get_config_file("demo/mask_rcnn_R_18_FPN_sn_synthetic.yaml")


def write_loss_curve(metrics_file: str, out_png: str) -> None:
    """Plot every loss in detectron2's metrics.json against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    with open(metrics_file) as f:
        for line in f:
            row = json.loads(line)
            if "total_loss" in row:
                rows.append(row)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = ["total_loss"] + sorted(k for k in rows[0] if k.startswith("loss_"))
    for k in keys:
        ax.plot(
            [r["iteration"] for r in rows],
            [r[k] for r in rows],
            label=k,
            lw=2 if k == "total_loss" else 1,
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("SN Mask R-CNN on the synthetic data: training losses")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def write_predictions(cfg, weights: str, out_dir: str, count: int) -> list:
    """Ground truth | prediction pictures for the first ``count`` images of the test set."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for d in DatasetCatalog.get(name)[:count]:
        bgr = cv2.imread(d["file_name"])
        rgb = bgr[:, :, ::-1]
        instances = predictor(bgr if cfg.INPUT.FORMAT == "BGR" else rgb)["instances"].to("cpu")
        instances = instances[instances.scores >= 0.5]
        gt = Visualizer(rgb, meta, scale=3).draw_dataset_dict(d).get_image()
        pred = Visualizer(rgb, meta, scale=3).draw_instance_predictions(instances).get_image()
        path = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(d['file_name']))[0]}.png")
        cv2.imwrite(path, np.concatenate([gt, pred], axis=1)[:, :, ::-1])
        written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", default=DEFAULT_CONFIG, help="config to train (default: the demo's)"
    )
    parser.add_argument("--output-dir", default="output/demo", help="where everything is written")
    parser.add_argument("--num-pictures", type=int, default=6, help="prediction pictures to draw")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config"
    )
    args = parser.parse_args()
    # setup_cfg expects detectron2's argument names.
    args.opts = list(args.opts) + ["OUTPUT_DIR", args.output_dir]
    args.eval_only, args.resume = False, False
    try:
        cfg = setup_cfg(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    start = time.time()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # The EvalHook evaluated DATASETS.TEST after the last iteration and kept the results where
    # DefaultTrainer.train() itself reads them (it returns them only with EXPECTED_RESULTS).
    results = trainer._last_eval_results
    minutes = (time.time() - start) / 60

    out = cfg.OUTPUT_DIR
    summary = {
        "config": os.path.relpath(args.config_file),
        "iterations": cfg.SOLVER.MAX_ITER,
        "train_and_eval_minutes": round(minutes, 2),
        "results": results,
    }
    with open(os.path.join(out, "final_metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)
    write_loss_curve(os.path.join(out, "metrics.json"), os.path.join(out, "loss_curve.png"))
    pictures = write_predictions(
        cfg,
        os.path.join(out, "model_final.pth"),
        os.path.join(out, "predictions"),
        args.num_pictures,
    )

    print()
    print(f"Trained and evaluated in {minutes:.1f} min.")
    for task in ("bbox", "segm"):
        if task in results:
            print(
                f"  {task:4s} AP = {results[task]['AP']:.1f}   AP50 = {results[task]['AP50']:.1f}"
            )
    print(f"Metrics:     {os.path.join(out, 'final_metrics.json')}")
    print(f"Loss curve:  {os.path.join(out, 'loss_curve.png')}")
    print(f"Predictions: {len(pictures)} pictures in {os.path.join(out, 'predictions')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
