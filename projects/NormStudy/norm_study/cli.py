"""The study's command line: plan the runs, execute the unfinished ones with progress, report."""

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import List, Optional

from .plan import CONFIG, IMS_PER_PROCESS, NORMS, REPO, SIZES, plan_runs
from .report import write_report
from .runner import RunFailed, execute, read_result, stop_all, write_json_atomically

__all__ = ["main", "parse_args"]

EXAMPLES = """examples:
  # the whole study on a CPU (17.5 minutes measured on 2 quiet cores), resumable:
  projects/NormStudy/study.py --output output/norm_study
  # on GPUs, the larger size (6x the images, seeds 0-2 in the 2-image column):
  projects/NormStudy/study.py --device cuda --size large --output output/norm_study_large
  # a part of it:
  projects/NormStudy/study.py --norms BN,GN,SN --ims-per-process 1,8
"""
SETTINGS_FILE = "study.json"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One sentence and exit status 2 (argparse would print the usage block first)."""
        self.exit(2, f"error: {message}\n")


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def _norm_list(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in NORMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown norm {', '.join(map(repr, unknown)) or repr(text)}; choose from "
            + ", ".join(NORMS)
        )
    return names


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(
        prog="study.py",
        description="Train the same small Mask R-CNN with FrozenBN, BN, GN, SN, SSN and SyncSN at "
        "1-8 images per process on the embedded synthetic data, and compare their COCO AP.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default="output/norm_study", help="study folder")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", choices=tuple(SIZES), default="default", help="study size")
    parser.add_argument(
        "--norms", type=_norm_list, default=list(NORMS), help="comma-separated subset of the norms"
    )
    parser.add_argument(
        "--ims-per-process",
        type=_int_list,
        default=list(IMS_PER_PROCESS),
        help="comma-separated images per process",
    )
    parser.add_argument("--seeds", type=_int_list, help="seeds of every cell (default: the size's)")
    parser.add_argument(
        "--spread-seeds",
        type=_int_list,
        help="extra seeds run at the size's spread column, for the seed spread "
        "(default: the size's; '' for none)",
    )
    parser.add_argument("--images", type=int, help="images seen per run (default: the size's)")
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs trained at the same time, sharing the CPU cores (default: 2 on a CPU with "
        "2 or more cores, else 1; 1 with --device cuda)",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every run's model_final.pth (by default removed once its result is recorded)",
    )
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    args.seeds = list(size.seeds if args.seeds is None else args.seeds)
    args.spread_seeds = list(size.spread_seeds if args.spread_seeds is None else args.spread_seeds)
    args.images = size.images if args.images is None else args.images
    if not args.ims_per_process or min(args.ims_per_process) < 1:
        parser.error("--ims-per-process needs positive integers")
    if not args.seeds or min(args.seeds + args.spread_seeds) < 0:
        parser.error("--seeds needs at least one seed, and seeds are non-negative integers")
    if args.jobs is None:
        args.jobs = 2 if args.device == "cpu" and (os.cpu_count() or 1) >= 2 else 1
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.images < 1:
        parser.error("--images must be a positive number of images")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f"--output {args.output!r} exists and is not a folder")
    missing = [t for t in {NORMS[n].trainer for n in args.norms} if not os.path.isfile(
        os.path.join(REPO, t))]  # fmt: skip
    if missing or not os.path.isfile(CONFIG):
        parser.error(
            f"the study runs from a source checkout of sn_det, and {REPO} lacks "
            f"{', '.join(missing) or CONFIG}"
        )
    if args.device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            parser.error("--device cuda, but no CUDA GPU is available; use --device cpu")
        wanted = max(NORMS[n].processes for n in args.norms)
        if gpus < wanted:
            parser.error(f"SyncSN needs {wanted} GPUs with --device cuda, this machine has {gpus}")
    return args


def _check_settings(args) -> None:
    """A study folder holds runs of one setting: refuse to mix another one into it."""
    settings = {"size": args.size, "images": args.images, "device": args.device}
    path = os.path.join(args.output, SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old != settings:
            print(
                f"error: {args.output} holds a study with other settings ({old}, now {settings}); "
                "use another --output",
                file=sys.stderr,
            )
            sys.exit(2)
    else:
        os.makedirs(args.output, exist_ok=True)
        write_json_atomically(path, settings)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return (f"{h}h" if h else "") + f"{rest // 60:02d}m{rest % 60:02d}s"


def _ap(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _estimate(run, finished: List[dict]) -> Optional[float]:
    """Seconds ``run`` will take: the mean of finished runs of the same batch layout, else of
    all finished runs (None before the first)."""
    same = [
        r["wall_s"]
        for r in finished
        if (r["total_batch"], r["processes"]) == (run.total_batch, run.norm.processes)
    ]
    pool = same or [r["wall_s"] for r in finished]
    return sum(pool) / len(pool) if pool else None


def _threads(args, run) -> int:
    """CPU threads per training process: the cores shared between concurrent processes."""
    return max(1, (os.cpu_count() or 1) // max(args.jobs, run.norm.processes))


def _print_start(i, total, run, start, active, pending, results, jobs) -> None:
    """The progress line of a run being started, with the study's remaining time: the
    estimates of the unfinished runs, spread over the job slots."""
    finished = [r for r in results.values() if r is not None]
    estimates = [_estimate(r, finished) for _, r, _ in active.values()]
    estimates += [_estimate(r, finished) for _, r in pending]
    remaining = (
        "unknown until a run finishes" if None in estimates else _duration(sum(estimates) / jobs)
    )
    s = run.schedule()
    print(
        f"[run {i}/{total}] {run.name} started: total batch {run.total_batch}, lr {s['lr']:g}, "
        f"{s['iterations']} iterations | elapsed {_duration(time.monotonic() - start)}, "
        f"estimated remaining {remaining}",
        flush=True,
    )


def _run_all(args, todo, pending, active, free, run_dir, results, failures, start, pool):
    """Start the runs in order as job slots free up, and collect their results."""
    while pending or active:
        # Start runs in order while their processes fit into the free job slots (a
        # SyncSN run takes as many slots as it has processes, up to all of them).
        while pending and min(pending[0][1].norm.processes, args.jobs) <= free:
            i, run = pending.pop(0)
            slots = min(run.norm.processes, args.jobs)
            free -= slots
            threads = _threads(args, run) if args.device == "cpu" else None
            future = pool.submit(
                execute, run, args.device, run_dir[run.name], args.keep_checkpoints, threads
            )
            active[future] = (i, run, slots)
            _print_start(i, len(todo), run, start, active, pending, results, args.jobs)
        finished, _ = wait(active, return_when=FIRST_COMPLETED)
        for future in finished:
            i, run, slots = active.pop(future)
            free += slots
            try:
                result = future.result()
            except RunFailed as e:
                failures.append((run.name, e))
                print(
                    f"[run {i}/{len(todo)}] {run.name} FAILED: {e.reason}; log: {e.log}",
                    flush=True,
                )
                continue
            results[run.name] = result
            if result["status"] == "diverged":
                at = result["diverged_at"]
                outcome = f"diverged at iteration {at if at >= 0 else '?'}"
            else:
                outcome = f"box AP {_ap(result['box_ap'])}, mask AP {_ap(result['mask_ap'])}"
            print(
                f"[run {i}/{len(todo)}] {run.name} done in {_duration(result['wall_s'])}: "
                f"{outcome}",
                flush=True,
            )


def main(argv=None) -> int:
    args = parse_args(argv)
    _check_settings(args)
    size = SIZES[args.size]
    runs = plan_runs(
        args.norms, args.ims_per_process, size, args.seeds, args.spread_seeds, args.images
    )
    run_dir = {run.name: os.path.join(args.output, "runs", run.name) for run in runs}
    results = {run.name: read_result(run_dir[run.name]) for run in runs}
    todo = [run for run in runs if results[run.name] is None]
    print(
        f"Normalisation study: {len(runs)} runs ({len(runs) - len(todo)} already finished), "
        f"{args.images} images each, on {args.device}; output in {args.output}",
        flush=True,
    )
    failures = []
    start = time.monotonic()
    active = {}  # future -> (index, run, job slots it holds)
    pending = list(enumerate(todo, 1))
    free = args.jobs
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        try:
            _run_all(args, todo, pending, active, free, run_dir, results, failures, start, pool)
        except KeyboardInterrupt:
            stop_all()  # the training commands run in their own process groups
            print(
                f"\nInterrupted: {len(active)} unfinished run(s) stopped; rerun the same command "
                "to resume (finished runs are kept).",
                file=sys.stderr,
            )
            return 130

    done = [results[run.name] for run in runs if results[run.name] is not None]
    title = (
        f"Normalisation study: R-18-FPN Mask R-CNN from scratch, {args.images} images per run, "
        f"{size.input_size} px, {args.device}"
    )
    names = write_report(args.output, done, args.norms, args.ims_per_process, title)
    print(
        f"Report ({len(done)} of {len(runs)} runs): "
        + ", ".join(os.path.join(args.output, n) for n in names[:3])
        + (f" and {len(names) - 3} importance pictures" if len(names) > 3 else "")
    )
    print(f"Total time {_duration(time.monotonic() - start)}.")
    if failures:
        print(f"{len(failures)} run(s) failed:", file=sys.stderr)
        for name, e in failures:
            print(f"  {name}: {e.reason}; log: {e.log}", file=sys.stderr)
        return 1
    return 0
