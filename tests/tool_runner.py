"""The repository's tools run as a user runs them, in a subprocess: paths, runners, the option
list of one short training step, and the check of a one-sentence refusal."""

import contextlib
import io
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
TRAIN_NET = os.path.join(TOOLS, "train_net.py")
# The quick-schedule config: a tiny Mask R-CNN with SN on the synthetic dataset.
INSTANT = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_sn_instant_test.yaml")


def run_tool(script, *args, env=None, drop=(), cwd=REPO, timeout=300):
    """``python script *args`` with this interpreter, in ``cwd`` (None: this process's).
    The environment is this process's without the variables in ``drop``, updated by ``env``.

    Returns:
        the CompletedProcess, its stdout and stderr as text.
    """
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=full_env,
    )


def train_net(*opts, env=None, timeout=300):
    """tools/train_net.py with ``opts`` (arguments and config options), run from REPO.

    Returns:
        (exit code, stdout + stderr).
    """
    proc = run_tool(TRAIN_NET, *opts, env=env, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def one_step(output_dir):
    """Config options for one training iteration, no evaluation, written to ``output_dir``."""
    return ["SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()", "OUTPUT_DIR", str(output_dir)]


def one_sentence_exit_2(code, log, *expected):
    """Asserts a refusal: exit 2, no traceback, and a last line "error: ..." that contains each
    of ``expected``. Returns that line."""
    assert code == 2, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for text in expected:
        assert text in last, last
    return last


def setup_cfg_here(opts=(), config_file=INSTANT, eval_only=False, num_gpus=1):
    """sn_det's setup_cfg in this process, with tools/train_net.py's arguments: what the
    command checks before any worker starts, raising the ConfigError whose one-sentence exit
    the tests show once through the command (a command start costs ~8 s on these CPUs)."""
    from argparse import Namespace

    from sn_det.engine import setup_cfg

    args = Namespace(
        config_file=str(config_file), opts=list(opts), num_gpus=num_gpus, num_machines=1,
        eval_only=eval_only, resume=False,
    )  # fmt: skip
    return setup_cfg(args, default=False)


def call_main(main, argv):
    """A command's ``main(argv)`` in this process, as a CompletedProcess (exit code, what it
    printed to stdout and stderr): for checks that need no fresh process (a command start
    costs ~8 s on these CPUs). An exception escaping ``main`` fails the test, as a traceback
    from the command would; argparse's refusals (SystemExit) give their exit code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def script_main(path):
    """The ``main`` function of the script at ``path``, loaded as a module (to run it in this
    process: a tool start costs seconds on these CPUs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def markdown_table(text, first_cell):
    """The rows (lists of cells, ** stripped) of the markdown table whose header starts with
    ``first_cell``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    return lines[start], rows
