"""Deployment of an SN Mask R-CNN: detectron2's TorchScript scripting and tracing, and ONNX
export run by onnxruntime, each against the eager model."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from sn_det import add_sn_config
from sn_det.export import export_onnx
from sn_det.layers import SwitchNorm2d

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_sn_instant_test.yaml")


def _model(trained: bool):
    """The instant-test SN Mask R-CNN; ``trained`` perturbs every parameter and statistic
    (as training would), else the fresh initialisation with its many identical values."""
    cfg = add_sn_config(get_cfg())
    cfg.merge_from_file(INSTANT)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert any(isinstance(m, SwitchNorm2d) for m in model.modules())
    if trained:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
            for m in model.modules():
                if isinstance(m, SwitchNorm2d) and m.using_bn:
                    m.running_mean.normal_(0, 0.1, generator=g)
                    m.running_var.uniform_(0.5, 1.5, generator=g)
    return model


def _image():
    g = torch.Generator().manual_seed(2)
    return torch.rand(3, 128, 160, generator=g) * 255


def _inference(model, image):
    return model.inference([{"image": image}], do_postprocess=False)[0]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def _assert_same_instances(got, expected):
    assert len(got) == len(expected) > 0
    assert _rel(got.pred_boxes.tensor, expected.pred_boxes.tensor) <= 1e-4
    assert _rel(got.scores, expected.scores) <= 1e-4
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert _rel(got.pred_masks, expected.pred_masks) <= 1e-4


def test_scripting_with_instances_matches_eager():
    model = _model(trained=True)
    fields = {
        "proposal_boxes": Boxes,
        "objectness_logits": torch.Tensor,
        "pred_boxes": Boxes,
        "scores": torch.Tensor,
        "pred_classes": torch.Tensor,
        "pred_masks": torch.Tensor,
    }
    scripted = scripting_with_instances(model, fields)
    image = _image()
    with torch.no_grad():
        _assert_same_instances(_inference(scripted, image), _inference(model, image))


def test_tracing_adapter_matches_eager():
    model = _model(trained=True)
    image = _image()
    adapter = TracingAdapter(
        model, [{"image": image}], lambda m, inputs: _inference(m, inputs[0]["image"])
    )
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        outputs = adapter.outputs_schema(traced(*adapter.flattened_inputs))
        _assert_same_instances(outputs, _inference(model, image))


@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "trained"])
def test_onnx_export_of_the_backbone_runs_in_onnxruntime(tmp_path, trained):
    ort = pytest.importorskip("onnxruntime")
    model = _model(trained)
    x = model.preprocess_image([{"image": _image()}]).tensor
    path = str(tmp_path / "backbone.onnx")
    export_onnx(model.backbone, (x,), path, opset_version=17, input_names=["image"])
    with torch.no_grad():
        expected = model.backbone(x)
    outputs = ort.InferenceSession(path).run(None, {"image": x.numpy()})
    assert len(outputs) == len(expected)
    for (name, value), got in zip(expected.items(), outputs):
        assert _rel(torch.from_numpy(got), value) <= 1e-4, name
    assert not os.path.exists(path + ".tmp")
