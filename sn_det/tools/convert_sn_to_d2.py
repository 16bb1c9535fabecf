"""Convert a published SN ResNet (the authors' .pth) to a detectron2 checkpoint.

Reads both forms the authors distributed: the ImageNet checkpoints
(``{'state_dict': {'module.conv1.weight', ...}}``) and the Detectron.pytorch backbones
(``{'model': {'Conv_Body.conv_body.res1.conv1.weight', ...}}``, written by their
tools/convert.py with --use-FPN, or ``Conv_Body.res1...`` without; the only form of their
(8,2) and (8,1) FPN backbones). Both give the same detectron2 checkpoint for one network.

The output works as MODEL.WEIGHTS for both the C4 and the FPN recipes (detectron2 matches
res5.* to the backbone or to the C4 ROI head by name). Every old -> new key is printed;
the ImageNet classifier is dropped. ``--dst *.pkl`` writes detectron2's pickle format (a dict
of numpy arrays, readable by detectron2's own DetectionCheckpointer), any other name torch's.
Nothing is written unless the whole file converts, and never half a file.
(MODEL.WEIGHTS may also point at either published form directly: it is converted on load.)
"""

import argparse
import os
import sys

from sn_det.checkpoint import (
    TRUST_ENV,
    CheckpointConversionError,
    convert_published_state_dict,
    converted_checkpoint,
    load_checkpoint_file,
    published_format,
    save_atomically,
)

EXAMPLES = """examples:
  tools/convert_sn_to_d2.py --ckpt 'ResNet50v1+SN(8,32)-77.49.pth' --dst pretrained/resnet50_sn_8x32.pth
  tools/convert_sn_to_d2.py --ckpt resnet50_sn_8x1.pth --dst pretrained/resnet50_sn_8x1.pkl
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt",
        required=True,
        help="published SN checkpoint (.pth): ImageNet or Detectron.pytorch backbone form",
    )
    parser.add_argument(
        "--dst",
        required=True,
        help="detectron2 checkpoint to write: .pkl = detectron2's pickle of numpy arrays, "
        "otherwise torch.save",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="DANGEROUS: fully unpickle a --ckpt that references code (it can run anything); "
        "only for a file you trust (same as SN_DET_TRUST_CHECKPOINTS=1)",
    )
    parser.add_argument(
        "--use-FPN",
        action="store_true",
        help="accepted for the seed's scripts; not needed: the output serves C4 and FPN "
        "models alike, and Detectron.pytorch inputs are read with or without the FPN prefix",
    )
    args = parser.parse_args(argv)
    if args.trust_checkpoint:
        os.environ[TRUST_ENV] = "1"
    if args.use_FPN:
        print("note: --use-FPN is not needed: the output serves C4 and FPN models alike")
    try:
        loaded = load_checkpoint_file(args.ckpt)
        fmt = published_format(loaded)
        state_dict, meta, report = convert_published_state_dict(loaded)
    except CheckpointConversionError as e:
        msg = str(e)  # name the file once: loading errors already do
        print(f"error: {msg if args.ckpt in msg else f'{args.ckpt}: {msg}'}", file=sys.stderr)
        return 2
    print(f"{args.ckpt}: the authors' {fmt} layout")
    for line in report:
        print(line)
    save_atomically(converted_checkpoint(state_dict, meta), args.dst)
    print(
        f"ResNet-{meta['depth']}, {'with' if meta['using_bn'] else 'without'} BN statistics "
        f"({'3' if meta['using_bn'] else '2'} switch weights per layer): use it with "
        f"MODEL.SN.USING_BN {meta['using_bn']}"
    )
    print(f"wrote {len(state_dict)} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
