"""What the scripts in benchmarks/ share: one-sentence argument errors, the NxCxHxW shape
argument, the rotating round order, and the markdown table of medians against a baseline."""

import argparse
import statistics


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one sentence and exit 2 (no usage block)."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def parse_shape(parser, text, channels_multiple=1):
    """(N, C, H, W) from "NxCxHxW", all positive and C a multiple of ``channels_multiple``;
    otherwise ``parser.error``."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
        assert len(shape) == 4 and min(shape) > 0 and shape[1] % channels_multiple == 0
    except (ValueError, AssertionError):
        extra = f", C a multiple of {channels_multiple}" if channels_multiple > 1 else ""
        parser.error(f"--shape {text!r}: give NxCxHxW, positive{extra}")
    return shape


def rotated(items, r):
    """``items`` in round ``r``'s order: each starts a round equally often."""
    k = r % len(items)
    return items[k:] + items[:k]


def print_medians(times, baseline, first_column):
    """The markdown table of median microseconds per key of ``times`` and the ratio to the
    ``baseline`` key's median."""
    base = statistics.median(times[baseline])
    print(f"| {first_column} | us/step | vs {baseline.split(',')[0]} |")
    print("|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {statistics.median(v):.0f} | {statistics.median(v) / base:.2f} |")
