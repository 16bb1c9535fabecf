"""SN under torch.compile: one graph through the layer (no graph break), and the compiled
layer against the float64 reference in every mode (outputs, every gradient, running stats)."""

import pytest
import torch

from sn_det.layers import SwitchNorm2d, SyncSwitchNorm2d
from sn_reference import reference_switch_norm
from sn_testing import assert_close, make_layer, random_input, reference_params


def _graph_breaks(model, x):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    return explanation.graph_break_count, [str(r.reason)[:200] for r in explanation.break_reasons]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls", [SwitchNorm2d, SyncSwitchNorm2d])
def test_no_graph_break_at_the_layer(cls, training):
    """The compiled CPU kernels (pybind calls) and the Triton launches are opaque to dynamo;
    under torch.compile the layer is plain torch ops, so a model stays one graph."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        cls(8),
        torch.nn.ReLU(),
        cls(8, using_bn=False),
    ).train(training)
    breaks, reasons = _graph_breaks(model, torch.randn(2, 3, 6, 6))
    assert breaks == 0, reasons


def _reference_step(m, x, mode):
    """float64 reference output, parameter gradients and running statistics after one call."""
    params = reference_params(m)
    xr = x.detach().clone().requires_grad_(True)
    training = mode in ("train", "batch_average")
    rm = m.running_mean.clone() if m.using_bn else None
    rv = m.running_var.clone() if m.using_bn else None
    y, mean_bn, var_bn = reference_switch_norm(xr, *params, rm, rv, training=training, eps=m.eps)
    if mean_bn is not None:
        if mode == "batch_average":
            rm, rv = rm + mean_bn, rv + mean_bn**2 + var_bn
        else:
            rm = m.momentum * rm + (1 - m.momentum) * mean_bn
            rv = m.momentum * rv + (1 - m.momentum) * var_bn
    return y, params, xr, rm, rv


@pytest.mark.parametrize("mode", ["train", "eval", "frozen", "no_bn", "batch_average"])
def test_compiled_layer_matches_float64_reference(mode):
    m = make_layer(5, using_bn=mode != "no_bn", moving=mode != "batch_average")
    if mode == "eval":
        m.eval()
    elif mode == "frozen":
        m.freeze()
    x = random_input((3, 5, 4, 3))
    y_ref, ref_params, xr, rm, rv = _reference_step(m, x, mode if mode != "frozen" else "eval")
    dy = torch.randn_like(y_ref)
    (y_ref * dy).sum().backward()

    torch._dynamo.reset()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)  # fullgraph: no break
    y = compiled(x)
    (y * dy).sum().backward()
    assert_close(y, y_ref.detach(), what="output")
    assert_close(x.grad, xr.grad, what="dx")
    names = ("weight", "bias", "mean_weight", "var_weight")
    for name, p, r in zip(names, m.parameters(), ref_params):
        if p.requires_grad:
            assert_close(p.grad, r.grad, what=f"d{name}")
        else:  # frozen
            assert p.grad is None
    if m.using_bn:
        assert_close(m.running_mean, rm.detach(), what="running_mean")
        assert_close(m.running_var, rv.detach(), what="running_var")
    if mode == "batch_average":
        assert int(m.num_batches_accumulated) == 1


def test_inductor_float32_matches_eager():
    """The real backend (inductor, C++ on the CPU): float32 output and gradients as eager,
    including a half-precision input (statistics taken in float32) and a large offset."""
    torch.manual_seed(0)
    layer = SwitchNorm2d(6)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
        layer.var_weight.copy_(torch.tensor([-0.4, 0.1, 0.6]))
    eager_layer = SwitchNorm2d(6)
    eager_layer.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, 5, 7) * 3 + 1e3
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    for inp in (x, x.to(torch.bfloat16)):
        xa = inp.clone().requires_grad_(True)
        xb = inp.clone().requires_grad_(True)
        ya, yb = compiled(xa), eager_layer(xb)
        assert ya.dtype == inp.dtype
        tol = 1e-4 if inp.dtype == torch.float32 else 2e-2
        assert_close(ya.float(), yb.float(), rtol=tol, what=f"{inp.dtype} output")
        ya.float().pow(2).sum().backward()
        yb.float().pow(2).sum().backward()
        assert_close(xa.grad.float(), xb.grad.float(), rtol=tol * 10, what=f"{inp.dtype} dx")
    for p, q in zip(layer.parameters(), eager_layer.parameters()):
        assert_close(p.grad, q.grad, rtol=1e-3, what="parameter gradient")
    assert_close(layer.running_mean, eager_layer.running_mean, rtol=1e-5, what="running_mean")


def test_sn_resnet_fpn_backbone_is_one_graph():
    """A whole detectron2 ResNet-18-FPN with SN in every norm compiles as a single graph."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    from sn_det.config import add_sn_config
    from sn_det.modeling.backbone import build_sn_resnet_fpn_backbone

    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = "SN"
    cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_sn_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).train()
    n_sn = sum(isinstance(m, SwitchNorm2d) for m in backbone.modules())
    assert n_sn > 20
    breaks, reasons = _graph_breaks(backbone, torch.randn(2, 3, 64, 64))
    assert breaks == 0, reasons
