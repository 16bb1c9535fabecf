"""SN batch-average statistics: the recomputation against a plain float64 pooled computation
over the same batches, the layers it must not touch, the training hook (evaluation sees the
recomputed statistics), and identical statistics on two gloo ranks."""

import os

import pytest
import torch
from torch import nn

from distributed import run_distributed
from sn_det.engine import Trainer, load_cfg, recompute_sn_batch_statistics
from sn_det.layers import SwitchNorm2d, SyncSwitchNorm2d
from sn_testing import assert_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_sn_instant_test.yaml")


def plain_pooled_statistics(inputs):
    """Pooled BN-term statistics of the batches an SN layer saw, written out plainly:
    per batch, mean_bn = mean over samples of the plane means and var_bn = mean over
    samples of (unbiased plane variance + plane mean^2) - mean_bn^2; pooled over the K
    non-empty batches as mean_k mean_bn and mean_k (var_bn + mean_bn^2) - mean^2."""
    means, second_moments = [], []
    for x in inputs:
        x = x.double()
        if x.shape[0] == 0:
            continue  # an empty batch has no statistics
        n, c, h, w = x.shape
        planes = x.reshape(n, c, h * w)
        plane_mean = planes.mean(-1)
        plane_var = planes.var(-1, unbiased=True)
        mean_bn = plane_mean.mean(0)
        var_bn = (plane_var + plane_mean**2).mean(0) - mean_bn**2
        means.append(mean_bn)
        second_moments.append(var_bn + mean_bn**2)
    mean = torch.stack(means).mean(0)
    return mean, torch.stack(second_moments).mean(0) - mean**2


def capture_batch_average_inputs(model):
    """Record every SN layer's input during training-mode forwards without grad (the
    recomputation's forwards); returns {layer: [inputs]} and the hook handles."""
    seen, handles = {}, []
    for m in model.modules():
        if isinstance(m, SwitchNorm2d):

            def hook(mod, args):
                if mod.training and not torch.is_grad_enabled():
                    seen.setdefault(mod, []).append(args[0].detach().clone())

            handles.append(m.register_forward_pre_hook(hook))
    return seen, handles


class Net(nn.Module):
    """Every kind of layer the recomputation meets."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.sn1 = SwitchNorm2d(6, momentum=0.5)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)  # must keep its running statistics
        self.sn2 = SwitchNorm2d(8)
        self.sn_no_bn = SwitchNorm2d(8, using_bn=False)  # nothing to recompute
        self.sn_frozen = SwitchNorm2d(8).freeze()  # keeps its statistics
        self.sn_unused = SwitchNorm2d(8)  # sees only empty batches, like a mask head
        with torch.no_grad():
            # A non-trivial BN affine: a BN output's batch mean is its bias, and a zero bias
            # would leave sn2's mean_bn at rounding noise.
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-1, 1)
            for m in (self.sn1, self.sn2, self.sn_frozen, self.sn_unused):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = self.sn1(self.conv1(x)).relu()
        y = self.sn2(self.bn(self.conv2(y)))
        y = self.sn_frozen(self.sn_no_bn(y))
        self.sn_unused(y[:0])
        return y


def make_batches(k, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    # Different batch sizes and offsets, so batches differ and pooling matters.
    return [
        (torch.randn(2 + i % 3, 3, 9, 8, generator=g, dtype=torch.double) * (1 + i) + i + offset)
        for i in range(k)
    ]


def test_recompute_equals_plain_pooled_statistics_and_touches_nothing_else():
    torch.manual_seed(0)
    net = Net().double().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = make_batches(4)
    seen, handles = capture_batch_average_inputs(net)
    counts = recompute_sn_batch_statistics(net, iter(batches), num_iter=4)
    for h in handles:
        h.remove()

    assert counts == {"sn1": 4, "sn2": 4, "sn_unused": 0}
    for name in ("sn1", "sn2"):
        layer = getattr(net, name)
        mean, var = plain_pooled_statistics(seen[layer])
        assert_close(layer.running_mean, mean, 1e-10, f"{name} running_mean")
        assert_close(layer.running_var, var, 1e-10, f"{name} running_var")
        assert not torch.allclose(layer.running_mean, before[f"{name}.running_mean"])
        assert layer.using_moving_average and int(layer.num_batches_accumulated) == 0
    untouched = [k for k in before if not k.startswith(("sn1.", "sn2."))]
    for key in untouched:  # BN statistics, frozen and unused SN, every weight
        assert torch.equal(net.state_dict()[key], before[key]), key
    assert not net.training  # the mode it was in


def test_a_failing_recompute_restores_the_statistics():
    net = Net().double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(StopIteration):
        recompute_sn_batch_statistics(net, iter(make_batches(2)), num_iter=3)
    for key, value in before.items():
        assert torch.equal(net.state_dict()[key], value), key
    assert net.sn1.using_moving_average and net.training


def test_num_iter_must_be_positive():
    with pytest.raises(ValueError, match="at least one batch"):
        recompute_sn_batch_statistics(Net(), iter([]), num_iter=0)


def test_the_training_hook_feeds_recomputed_statistics_to_evaluation(tmp_path, monkeypatch):
    cfg = load_cfg(
        INSTANT,
        [
            "SOLVER.MAX_ITER",
            "2",
            "TEST.SN_BATCH_AVG.ENABLED",
            "True",
            "TEST.SN_BATCH_AVG.NUM_ITER",
            "3",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
    )
    trainer = Trainer(cfg)
    model = trainer.model
    layers = [m for m in model.modules() if isinstance(m, SwitchNorm2d) and m.using_bn]
    seen, _ = capture_batch_average_inputs(model)

    import sn_det.engine.hooks as sn_hooks

    moving = {}
    original = sn_hooks.recompute_sn_batch_statistics

    def recompute_and_record(m, data, num_iter):
        for layer in layers:  # the moving averages just before the recomputation
            moving[layer] = (layer.running_mean.clone(), layer.running_var.clone())
        return original(m, data, num_iter)

    monkeypatch.setattr(sn_hooks, "recompute_sn_batch_statistics", recompute_and_record)
    at_evaluation = {}

    def fake_test(cls, cfg, model, evaluators=None):
        for layer in layers:
            at_evaluation[layer] = (layer.running_mean.clone(), layer.running_var.clone())
        return {}

    monkeypatch.setattr(Trainer, "test", classmethod(fake_test))
    trainer.train()

    assert len(layers) > 20 and set(at_evaluation) == set(layers)
    checked = 0
    for layer in layers:
        inputs = seen.get(layer, [])
        assert len(inputs) == 3, "one input per batch-average forward"
        if all(x.shape[0] == 0 for x in inputs):
            continue
        mean, var = plain_pooled_statistics(inputs)
        got_mean, got_var = at_evaluation[layer]
        assert_close(got_mean.double(), mean, 1e-4, "running_mean at evaluation")
        assert_close(got_var.double(), var, 1e-4, "running_var at evaluation")
        assert not torch.allclose(got_mean, moving[layer][0])  # not the moving average
        checked += 1
    assert checked > 20


def _recompute_on_rank(rank, world_size):
    torch.manual_seed(0)  # the same weights on both ranks
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3), SwitchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1), SyncSwitchNorm2d(4)
    ).double()
    batches = make_batches(3, seed=10 + rank, offset=rank)  # each rank its own data
    seen, _ = capture_batch_average_inputs(net)
    recompute_sn_batch_statistics(net, iter(batches), num_iter=3)
    plain = net[1]
    return dict(
        stats=[net[i].running_mean.clone() for i in (1, 4)]
        + [net[i].running_var.clone() for i in (1, 4)],
        plain_inputs=seen[plain],
    )


def test_statistics_are_identical_on_all_ranks_and_pool_every_rank():
    results = run_distributed(_recompute_on_rank, 2, timeout=120)
    for a, b in zip(results[0]["stats"], results[1]["stats"]):
        assert torch.equal(a, b)
    # The unsynchronized layer pools the 3 batches of each rank: 6 batches in all.
    mean, var = plain_pooled_statistics(results[0]["plain_inputs"] + results[1]["plain_inputs"])
    assert_close(results[0]["stats"][0], mean, 1e-10, "pooled running_mean")
    assert_close(results[0]["stats"][2], var, 1e-10, "pooled running_var")
