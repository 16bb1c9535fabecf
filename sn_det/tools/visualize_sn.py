"""Chart and tabulate the importance ratios of every SN layer of a checkpoint.

The importance ratios of an SN layer are the softmax of its switch logits: the shares of
instance (IN), layer (LN) and batch (BN) statistics in its mixed mean and mixed variance.
Writes to --out:
  sn_importance.png   two panels (mean, variance), one stacked IN/LN/BN bar per SN layer in
                      network order, grouped by stem, stages, FPN and heads
  sn_importance.csv   the same numbers, one row per layer
  sn_importance.md    the same numbers as a markdown table
The three files appear together or not at all.
"""

import argparse
import csv
import io
import os
import re
import sys

from sn_det.atomic_files import new_temp_file
from sn_det.checkpoint import (
    SN_AUTHOR,
    TRUST_ENV,
    CheckpointConversionError,
    SNDetectionCheckpointer,
)
from sn_det.engine import ConfigError, add_project_argument, load_cfg, project_config_adders
from sn_det.modeling import TERMS, build_model, check_norm_config, importance_ratios

EXAMPLES = """examples:
  tools/visualize_sn.py --ckpt output/demo/model_final.pth \\
      --config-file configs/demo/mask_rcnn_R_18_FPN_sn_synthetic.yaml --out output/demo/sn
  # a published ImageNet SN model (converted in memory; its ResNet's SN layers):
  tools/visualize_sn.py --ckpt resnet50_sn_8x32.pth \\
      --config-file configs/sn_baselines/faster_rcnn_R_50_FPN_2x_sn.yaml --out sn_8x32
  # a Sparse SN run (its config.yaml in OUTPUT_DIR needs the project's keys):
  tools/visualize_sn.py --project SparseSN --ckpt output/ssn/model_final.pth \\
      --config-file output/ssn/config.yaml --out output/ssn/sn
"""

RESNET_GROUPS = ("stem", "res2", "res3", "res4", "res5", "res5 head")
COLORS = {"IN": "#4c72b0", "LN": "#dd8452", "BN": "#55a868"}
COLUMNS = [f"{stat}_{term}" for stat in ("mean", "var") for term in TERMS]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="a checkpoint of the config's model")
    parser.add_argument("--config-file", required=True, help="the config that built it")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="DANGEROUS: fully unpickle a --ckpt that references code (it can run anything); "
        "only for a file you trust (same as SN_DET_TRUST_CHECKPOINTS=1)",
    )
    add_project_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def load_rows(args):
    """The importance ratios of the checkpoint's SN layers, in network order."""
    cfg = load_cfg(args.config_file, args.opts, project_config_adders(args))
    cfg.MODEL.DEVICE = "cpu"  # reading weights needs no GPU
    try:
        check_norm_config(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model = build_model(cfg)
    if not importance_ratios(model):
        raise ConfigError(f"the model of {args.config_file} has no SN layer to visualize")
    checkpoint = SNDetectionCheckpointer(model).load_weights_strictly(args.ckpt)
    rows = importance_ratios(model)
    if checkpoint.get("__author__") == SN_AUTHOR:
        # An ImageNet SN backbone: the FPN and head layers are not in it; show the ResNet.
        rows = [r for r in rows if r.group in RESNET_GROUPS]
    return rows


def markdown_table(rows) -> str:
    head = "| # | group | layer | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for i, r in enumerate(rows):
        values = " | ".join(f"{v:.3f}" for v in r.mean + r.var)
        lines.append(f"| {i} | {r.group} | `{r.name}` | {values} |")
    return "\n".join(lines) + "\n"


def csv_text(rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "group", "layer", *COLUMNS])
    for i, r in enumerate(rows):
        writer.writerow([i, r.group, r.name, *(f"{v:.6f}" for v in r.mean + r.var)])
    return buf.getvalue()


def short_name(name: str) -> str:
    """A tick label: the module name without what the group label already says."""
    name = re.sub(r"^(backbone\.bottom_up\.|backbone\.|roi_heads\.)", "", name)
    return name[: -len(".norm")] if name.endswith(".norm") else name


def chart_png(rows, title: str) -> bytes:
    """Two stacked-bar panels (mean, variance) with the layer groups marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.22 * n + 2.5), 7.5), sharex=True)
    x = range(n)
    # Group boundaries and centres, for separators and labels.
    spans, start = [], 0
    for i in range(1, n + 1):
        if i == n or rows[i].group != rows[start].group:
            spans.append((rows[start].group, start, i))
            start = i
    for ax, stat in zip(axes, ("mean", "var")):
        bottom = [0.0] * n
        for k, term in enumerate(TERMS):
            share = [getattr(r, stat)[k] for r in rows]
            ax.bar(x, share, bottom=bottom, width=0.85, color=COLORS[term], label=term)
            bottom = [b + s for b, s in zip(bottom, share)]
        ax.set_ylim(0, 1.08)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel(f"share in the {'mean' if stat == 'mean' else 'variance'}")
        for group, lo, hi in spans:
            if lo > 0:
                ax.axvline(lo - 0.5, color="black", lw=0.8)
            ax.text((lo + hi - 1) / 2, 1.04, group, ha="center", va="center", fontsize=8)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[0].set_title(title, fontsize=10)
    axes[1].set_xticks(list(x))
    axes[1].set_xticklabels([short_name(r.name) for r in rows], rotation=90, fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_all_or_nothing(out_dir: str, files: dict) -> None:
    """Write every file to a temporary name first, then rename them all into place."""
    os.makedirs(out_dir, exist_ok=True)
    staged = []
    try:
        for name, data in files.items():
            fd, tmp = new_temp_file(out_dir)
            staged.append((tmp, os.path.join(out_dir, name)))
            with os.fdopen(fd, "wb") as f:
                f.write(data if isinstance(data, bytes) else data.encode())
        for tmp, dst in staged:
            os.replace(tmp, dst)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.trust_checkpoint:
        os.environ[TRUST_ENV] = "1"
    try:
        rows = load_rows(args)
    except (ConfigError, CheckpointConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    title = f"SN importance ratios: {os.path.basename(args.ckpt)} ({len(rows)} SN layers)"
    files = {
        "sn_importance.png": chart_png(rows, title),
        "sn_importance.csv": csv_text(rows),
        "sn_importance.md": f"# {title}\n\n" + markdown_table(rows),
    }
    write_all_or_nothing(args.out, files)
    for name in files:
        print(os.path.join(args.out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
