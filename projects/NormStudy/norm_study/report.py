"""The study's report, from the recorded run results: a CSV (one row per run), a markdown table
(AP per norm and images per process, with the measured seed spread), a plot of box and mask AP
against images per process, and the final switch weights of the SN-type runs as pictures."""

import csv
import io
import math
import statistics
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

from sn_det.tools.visualize_sn import chart_png, write_all_or_nothing

from .importance import rows_from_json

__all__ = ["CSV_FILE", "TABLE_FILE", "PLOT_FILE", "cell_stats", "write_report"]

CSV_FILE = "results.csv"
TABLE_FILE = "results.md"
PLOT_FILE = "ap_vs_ims_per_process.png"
CSV_COLUMNS = (
    "run",
    "norm",
    "ims_per_process",
    "processes",
    "total_batch",
    "seed",
    "images",
    "iterations",
    "lr",
    "status",
    "diverged_at",
    "box_ap",
    "mask_ap",
    "wall_s",
    "cpu_s",
)
METRICS = (("box_ap", "box AP"), ("mask_ap", "mask AP"))


def cell_stats(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, sample standard deviation (nan for one value), count) of a cell's APs."""
    n = len(values)
    mean = statistics.fmean(values) if n else math.nan
    sd = statistics.stdev(values) if n > 1 else math.nan
    return mean, sd, n


def _cells(results: List[dict]) -> Dict[Tuple[str, int], List[dict]]:
    cells = defaultdict(list)
    for r in results:
        cells[(r["norm"], r["ims_per_process"])].append(r)
    return cells


def _cell_text(runs: List[dict], metric: str) -> str:
    values = [r[metric] for r in runs if r["status"] == "ok" and r[metric] is not None]
    diverged = [r for r in runs if r["status"] == "diverged"]
    if not values:
        if diverged:
            at = [str(r["diverged_at"]) if r["diverged_at"] >= 0 else "?" for r in diverged]
            return "diverged (iter " + ", ".join(at) + ")"
        return "-"
    mean, sd, n = cell_stats(values)
    text = f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {sd:.1f} (n={n})"
    if diverged:
        text += f", {len(diverged)} diverged"
    return text


def csv_text(results: List[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def markdown(results: List[dict], norms: Sequence[str], ims: Sequence[int], title: str) -> str:
    cells = _cells(results)
    lines = [f"# {title}", ""]
    for metric, label in METRICS:
        lines += [
            f"## {label} on sn_synth_val (COCOEvaluator), by images per process",
            "",
            "| norm | " + " | ".join(str(k) for k in ims) + " |",
            "|---|" + "---|" * len(ims),
        ]
        for norm in norms:
            row = [_cell_text(cells.get((norm, k), []), metric) for k in ims]
            lines.append(f"| {norm} | " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "Cells with several seeds show mean ± sample standard deviation (n seeds).",
        "",
        "## Seed-to-seed spread (measured)",
        "",
    ]
    spread = {key: runs for key, runs in cells.items() if len(runs) > 1}
    if not spread:
        lines += ["No cell has more than one seed yet.", ""]
    else:
        lines += [
            "| norm | images per process | seeds | box AP | mask AP |",
            "|---|---|---|---|---|",
        ]
        variances = {m: [] for m, _ in METRICS}
        for (norm, k), runs in sorted(spread.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            seeds = ", ".join(str(r["seed"]) for r in runs)
            texts = []
            for metric, _ in METRICS:
                values = [r[metric] for r in runs if r["status"] == "ok" and r[metric] is not None]
                each = ", ".join(f"{v:.1f}" for v in values)
                if len(values) > 1:
                    variances[metric].append(statistics.variance(values))
                    texts.append(f"{each} (sd {statistics.stdev(values):.1f})")
                else:
                    texts.append(each or "-")
            lines.append(f"| {norm} | {k} | {seeds} | {texts[0]} | {texts[1]} |")
        pooled = []
        for metric, label in METRICS:
            v = variances[metric]
            if v:  # cells of equal size: the pooled sd is the root of the mean variance
                pooled.append(f"{label} {math.sqrt(statistics.fmean(v)):.1f}")
        lines += [
            "",
            "Pooled seed standard deviation over these cells: " + ", ".join(pooled) + ".",
            "",
        ]
    walls = [r["wall_s"] for r in results]
    lines += [
        f"{len(results)} runs, {sum(walls) / 60:.1f} minutes of training and evaluation "
        "in all (wall clock, per-run times in results.csv).",
        "",
    ]
    return "\n".join(lines)


def plot_png(results: List[dict], norms: Sequence[str], ims: Sequence[int], title: str) -> bytes:
    """Box AP and mask AP against images per process, one line per norm (mean over seeds,
    error bars: the seeds' standard deviation where a cell has several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _cells(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (metric, label) in zip(axes, METRICS):
        for norm in norms:
            xs, means, sds = [], [], []
            for k in ims:
                values = [
                    r[metric]
                    for r in cells.get((norm, k), [])
                    if r["status"] == "ok" and r[metric] is not None
                ]
                if values:
                    mean, sd, _ = cell_stats(values)
                    xs.append(k)
                    means.append(mean)
                    sds.append(0.0 if math.isnan(sd) else sd)
            if xs:
                ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=norm)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ims))
        ax.set_xticklabels([str(k) for k in ims])
        ax.set_xlabel("images per process")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def importance_pictures(results: List[dict]) -> Dict[str, bytes]:
    """One importance chart (sn_det's, as tools/visualize_sn.py draws it) per SN-type norm and
    images per process, of its lowest-seed run."""
    pictures = {}
    for (norm, k), runs in sorted(_cells(results).items()):
        runs = sorted((r for r in runs if r.get("importance")), key=lambda r: r["seed"])
        if runs:
            r = runs[0]
            title = (
                f"{norm} at {k} images per process (seed {r['seed']}): final switch weights of "
                f"{len(r['importance'])} layers"
            )
            pictures[f"importance_{r['run']}.png"] = chart_png(
                rows_from_json(r["importance"]), title
            )
    return pictures


def write_report(
    out_dir: str, results: List[dict], norms: Sequence[str], ims: Sequence[int], title: str
) -> List[str]:
    """Write every report file into ``out_dir`` (all or none). Returns their names."""
    files = {
        CSV_FILE: csv_text(results),
        TABLE_FILE: markdown(results, norms, ims, title),
        PLOT_FILE: plot_png(results, norms, ims, title),
        **importance_pictures(results),
    }
    write_all_or_nothing(out_dir, files)
    return list(files)
