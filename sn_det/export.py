"""Deployment of SN models: ONNX export that onnxruntime accepts.

TorchScript needs nothing from here: ``torch.jit.script`` of SwitchNorm2d/SyncSwitchNorm2d
takes their scriptable forward, so detectron2's ``scripting_with_instances`` and
``TracingAdapter`` (``detectron2.export``) work on SN models as they are.

ONNX: ``torch.onnx.export`` (torch 2.3) deduplicates initializers with identical values
and refers to the dropped ones through ``Identity`` nodes. A freshly initialised SN model has
many identical parameters (every ``weight`` starts at ones, every switch logit at ones), and
onnxruntime rejects the resulting graph ("Node input '...norm.weight' is not a graph input,
initializer, or output of a previous node"). :func:`export_onnx` exports as torch does and
then turns each such alias back into an initializer of its own.
"""

import inspect
import io
import os
from typing import Any

import torch

__all__ = ["export_onnx"]


def _inline_initializer_aliases(model_proto) -> int:
    """Replace every ``Identity`` whose input is an initializer by a copy of that initializer
    under the Identity's output name. Returns the number of aliases replaced."""
    inits = {t.name: t for t in model_proto.graph.initializer}
    kept, copies = [], []
    for node in model_proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            alias = type(inits[node.input[0]])()
            alias.CopyFrom(inits[node.input[0]])
            alias.name = node.output[0]
            copies.append(alias)
        else:
            kept.append(node)
    if copies:
        del model_proto.graph.node[:]
        model_proto.graph.node.extend(kept)
        model_proto.graph.initializer.extend(copies)
    return len(copies)


def export_onnx(model: torch.nn.Module, args: Any, f: str, **kwargs) -> None:
    """``torch.onnx.export(model, args, f, **kwargs)`` whose output onnxruntime loads.

    Args:
        model, args, kwargs: as for ``torch.onnx.export`` (opset 16 or newer recommended).
        f: path of the ``.onnx`` file; written only once the export has succeeded (a failed
            export leaves no partial file).
    """
    import onnx  # the export extra: onnx (and onnxruntime to run the result)

    buffer = io.BytesIO()
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # torch >= 2.9 defaults to the dynamo exporter (needs onnxscript); the TorchScript
        # exporter is the one whose output this function knows how to mend.
        kwargs.setdefault("dynamo", False)
    torch.onnx.export(model, args, buffer, **kwargs)
    proto = onnx.load_from_string(buffer.getvalue())
    _inline_initializer_aliases(proto)
    onnx.checker.check_model(proto)
    tmp = f"{f}.tmp"
    with open(tmp, "wb") as out:
        out.write(proto.SerializeToString())
    os.replace(tmp, f)
