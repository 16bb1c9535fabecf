"""Random ImageNet SN models in the authors' published checkpoint layouts, for tests."""

import math
from collections import OrderedDict

import torch

BLOCKS, PLANES = (3, 4, 6, 3), (64, 128, 256, 512)  # ResNet-50


def published_resnet50(using_bn: bool, seed: int = 0) -> dict:
    """A random ResNet-50v1+SN in the authors' published layout (DataParallel keys)."""
    g = torch.Generator().manual_seed(seed)
    k = 3 if using_bn else 2
    sd = OrderedDict()

    def conv(name, cout, cin, ksize):
        std = math.sqrt(2.0 / (cin * ksize * ksize))
        sd[f"module.{name}.weight"] = torch.randn(cout, cin, ksize, ksize, generator=g) * std

    def sn(name, c):
        sd[f"module.{name}.weight"] = torch.rand(1, c, 1, 1, generator=g) + 0.5
        sd[f"module.{name}.bias"] = torch.randn(1, c, 1, 1, generator=g) * 0.1
        sd[f"module.{name}.mean_weight"] = torch.randn(k, generator=g)
        sd[f"module.{name}.var_weight"] = torch.randn(k, generator=g)
        if using_bn:
            sd[f"module.{name}.running_mean"] = torch.randn(1, c, 1, generator=g) * 0.2
            sd[f"module.{name}.running_var"] = torch.rand(1, c, 1, generator=g) + 0.5

    conv("conv1", 64, 3, 7)
    sn("sn1", 64)
    inplanes = 64
    for layer, (blocks, planes) in enumerate(zip(BLOCKS, PLANES), start=1):
        for i in range(blocks):
            p = f"layer{layer}.{i}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            sn(f"{p}.sn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            sn(f"{p}.sn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            sn(f"{p}.sn3", planes * 4)
            if i == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                sn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    sd["module.fc.weight"] = torch.randn(1000, 2048, generator=g) * 0.01
    sd["module.fc.bias"] = torch.zeros(1000)
    return {"epoch": 100, "arch": "resnet50", "state_dict": sd}


def detectron_pytorch_layout(ckpt: dict, use_fpn: bool) -> dict:
    """What the authors' tools/convert.py writes from an ImageNet checkpoint, written plainly:
    module.conv1/sn1.* -> res1.conv1/sn1.*, module.layer{L}.* -> res{L+1}.*,
    module.fc.* -> classifier.*, under Conv_Body.conv_body. (--use-FPN) or Conv_Body."""
    prefix = "Conv_Body.conv_body." if use_fpn else "Conv_Body."
    model = {}
    for key, value in ckpt["state_dict"].items():
        name = key[len("module.") :]
        if name.startswith(("conv1.", "sn1.")):
            new = "res1." + name
        elif name.startswith("fc."):
            new = "classifier." + name[len("fc.") :]
        else:
            assert name.startswith("layer")
            new = f"res{int(name[len('layer')]) + 1}{name[len('layer1'):]}"
        model[prefix + new] = value.clone()
    return {"model": model}
