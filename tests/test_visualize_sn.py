"""tools/visualize_sn.py: chart, CSV and markdown of a trained checkpoint's importance ratios,
checked against a softmax of the checkpoint's switch logits computed here."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from tool_runner import call_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "visualize_sn.py")
INSTANT = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_sn_instant_test.yaml")
OUTPUTS = {"sn_importance.png", "sn_importance.csv", "sn_importance.md"}


def run(*args):
    """The command, as a user runs it."""
    return subprocess.run(
        [sys.executable, TOOL, *args], capture_output=True, text=True, timeout=180, cwd=REPO
    )


def run_main(*args):
    """The command's main() in this process (a command start costs ~8 s on these CPUs; the
    first test runs the command itself). An exception escaping main() fails the test, as a
    traceback from the command would.

    Returns:
        a CompletedProcess with the exit code and what main() printed.
    """
    from sn_det.tools.visualize_sn import main

    return call_main(main, args)


def test_chart_and_tables_of_a_trained_checkpoint(instant_run, tmp_path):
    ckpt = os.path.join(instant_run[0], "model_final.pth")
    out = str(tmp_path / "vis")
    proc = run("--ckpt", ckpt, "--config-file", INSTANT, "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(os.listdir(out)) == OUTPUTS

    # Expected: every SN layer of the checkpoint, softmax of its logits in float64.
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    layers = [k[: -len(".mean_weight")] for k in state if k.endswith(".mean_weight")]
    assert len(layers) > 20
    with open(os.path.join(out, "sn_importance.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["layer"] for r in rows) == sorted(layers)
    for r in rows:
        for stat in ("mean", "var"):
            expected = torch.softmax(state[f"{r['layer']}.{stat}_weight"].double(), 0)
            got = torch.tensor([float(r[f"{stat}_{t}"]) for t in ("IN", "LN", "BN")])
            assert torch.allclose(got, expected.float(), atol=2e-6), (r["layer"], stat)

    # Network order, grouped: stem, stages, FPN, then the mask head.
    groups = [r["group"] for r in rows]
    order = ["stem", "res2", "res3", "res4", "res5", "FPN", "mask head"]
    assert [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g] == order
    assert rows[0]["layer"] == "backbone.bottom_up.stem.conv1.norm"

    with open(os.path.join(out, "sn_importance.md")) as f:
        table = f.read()
    assert table.count("\n| ") == len(rows) + 1  # header + one line per layer
    assert "`backbone.bottom_up.res5.1.conv2.norm`" in table

    import matplotlib.image

    image = matplotlib.image.imread(os.path.join(out, "sn_importance.png"))
    assert image.shape[0] > 400 and image.shape[1] > 800


def test_bad_input_is_one_sentence_exit_2_and_writes_nothing(instant_run, tmp_path):
    ckpt = os.path.join(instant_run[0], "model_final.pth")
    cases = [
        (["--ckpt", str(tmp_path / "missing.pth"), "--config-file", INSTANT], "does not exist"),
        (["--ckpt", str(tmp_path), "--config-file", INSTANT], "is a folder, not a checkpoint"),
        (
            # An R-50 model: the R-18 checkpoint does not hold its SN layers.
            [
                "--ckpt",
                ckpt,
                "--config-file",
                os.path.join(
                    REPO, "configs", "sn_baselines", "scratch_mask_rcnn_R_50_FPN_3x_sn.yaml"
                ),
            ],
            "does not hold the SN layers of this model",
        ),
        (
            [
                "--ckpt",
                ckpt,
                "--config-file",
                os.path.join(
                    REPO, "configs", "reference_baselines", "mask_rcnn_R_50_FPN_2x_gn.yaml"
                ),
            ],
            "has no SN layer",
        ),
    ]
    for args, message in cases:
        out = tmp_path / "vis"
        proc = run_main(*args, "--out", str(out))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
        assert not out.exists()


def test_a_published_imagenet_model_shows_its_resnet(tmp_path):
    from published_models import published_resnet50

    ckpt = str(tmp_path / "resnet50_sn_8x32.pth")
    published = published_resnet50(using_bn=True)
    torch.save(published, ckpt)
    out = str(tmp_path / "vis")
    recipe = os.path.join(REPO, "configs", "sn_baselines", "faster_rcnn_R_50_FPN_2x_sn.yaml")
    proc = run_main("--ckpt", ckpt, "--config-file", recipe, "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(os.path.join(out, "sn_importance.csv")) as f:
        rows = list(csv.DictReader(f))
    # 1 stem + 16 blocks x 3 + 4 shortcuts: the ResNet-50's SN layers, no FPN.
    assert len(rows) == 53 and {r["group"] for r in rows} == {
        "stem",
        "res2",
        "res3",
        "res4",
        "res5",
    }
    stem = torch.softmax(published["state_dict"]["module.sn1.var_weight"].double(), 0)
    got = torch.tensor([float(rows[0][f"var_{t}"]) for t in ("IN", "LN", "BN")])
    assert torch.allclose(got, stem.float(), atol=2e-6)


def plain_sparsemax(z):
    """Euclidean projection of z onto the simplex (Martins & Astudillo), in float64."""
    z = [float(v) for v in z]
    s = sorted(z, reverse=True)
    k = max(k for k in range(1, len(s) + 1) if 1 + k * s[k - 1] > sum(s[:k]))
    tau = (sum(s[:k]) - 1) / k
    return [max(v - tau, 0.0) for v in z]


def test_a_sparse_sn_checkpoint_through_the_project_option(tmp_path):
    """Sparse SN layers are shown with their own mixing: a fixed choice one-hot, an open one
    sparsemax of its logits (radius 0). The project's keys come from the config's folder, or
    from --project for a config.yaml dumped into a run's folder."""
    from sn_det.config import get_sn_cfg
    from sn_det.modeling import build_model
    from sn_det.projects.sparse_sn import SparseSwitchNorm2d, add_sparse_sn_config

    config = os.path.join(
        REPO,
        "projects",
        "SparseSN",
        "configs",
        "quick_schedules",
        "mask_rcnn_ssn_instant_test.yaml",
    )
    cfg = get_sn_cfg((add_sparse_sn_config,))
    cfg.merge_from_file(config)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    expected = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SparseSwitchNorm2d)]
    assert len(layers) > 20
    for i, (name, m) in enumerate(layers):
        with torch.no_grad():
            m.mean_weight.copy_(torch.randn(3, generator=g))
            m.var_weight.copy_(torch.randn(3, generator=g))
            m.mean_choice.fill_(i % 3)
        expected[name] = (
            [1.0 if t == i % 3 else 0.0 for t in range(3)],
            plain_sparsemax(m.var_weight),
        )
    ckpt = str(tmp_path / "ssn.pth")
    torch.save({"model": model.state_dict()}, ckpt)
    dumped = tmp_path / "config.yaml"
    dumped.write_text(cfg.dump())
    # Without --project its keys are unknown: the message names the project to pass.
    from sn_det.engine import ConfigError, load_cfg

    with pytest.raises(ConfigError) as e:
        load_cfg(str(dumped))
    assert "Non-existent config key: MODEL.SSN" in str(e.value)
    assert "config of the SparseSN project, whose keys" in str(e.value)
    assert "read with --project SparseSN)" in str(e.value)

    for args in (
        ["--config-file", config],
        ["--project", "SparseSN", "--config-file", str(dumped)],
    ):
        out = str(tmp_path / "vis")
        proc = run_main("--ckpt", ckpt, *args, "--out", out)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with open(os.path.join(out, "sn_importance.csv")) as f:
            rows = {r["layer"]: r for r in csv.DictReader(f)}
        assert sorted(rows) == sorted(expected)
        for name, (mean, var) in expected.items():
            got_mean = [float(rows[name][f"mean_{t}"]) for t in ("IN", "LN", "BN")]
            got_var = [float(rows[name][f"var_{t}"]) for t in ("IN", "LN", "BN")]
            assert got_mean == mean, name
            assert max(abs(a - b) for a, b in zip(got_var, var)) < 2e-6, (name, got_var, var)
        for f in os.listdir(out):
            os.remove(os.path.join(out, f))

    proc = run_main("--ckpt", ckpt, "--config-file", str(dumped), "--out", str(tmp_path / "no"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Non-existent config key: MODEL.SSN" in proc.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "no")
