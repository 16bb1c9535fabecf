#!/usr/bin/env python
"""Train or evaluate detectron2 models with Switchable Normalization.

This is detectron2's ``tools/train_net.py`` with sn_det's config keys, builders and
SN-aware optimizer; every flag of detectron2's parser works as usual. Training writes
checkpoints and metrics to OUTPUT_DIR; every test set is evaluated with COCOEvaluator.
"""

import sys

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

from sn_det.checkpoint import CheckpointConversionError, SNDetectionCheckpointer
from sn_det.engine import ConfigError, Trainer, setup_cfg

EXAMPLES = """examples:
  # tiny SN Mask R-CNN on the embedded synthetic data (CPU, under a minute):
  tools/train_net.py --config-file configs/quick_schedules/mask_rcnn_sn_instant_test.yaml
  # continue from the last checkpoint in OUTPUT_DIR:
  tools/train_net.py --config-file CFG --resume
  # evaluate a checkpoint:
  tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
  # two processes on a CPU-only machine (gloo), the BN term of SN synchronized over both:
  tools/train_net.py --num-gpus 2 --config-file configs/quick_schedules/mask_rcnn_sn_instant_test.yaml \\
      MODEL.RESNETS.NORM SyncSN MODEL.FPN.NORM SyncSN
  # the seed's recipe on 8 GPUs:
  tools/train_net.py --num-gpus 8 --config-file configs/sn_baselines/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml
"""


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SNDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test_with_sn_batch_average(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _main_or_exit(args):
    try:
        result = main(args)
    except (ConfigError, CheckpointConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if comm.get_world_size() > 1:
        # A rank can leave its last collective while a peer is still reading from it; exiting
        # then aborted the peer now and then (seen with gloo). Meet before exiting. (No
        # destroy_process_group: with gloo it hangs now and then, pytorch/pytorch#75097.)
        comm.synchronize()
    return result


def invoke_main() -> None:
    parser = default_argument_parser(epilog=EXAMPLES)
    args = parser.parse_args()
    # Config errors are reported before any worker starts, as one sentence and exit 2.
    try:
        setup_cfg(args, default=False)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("Command Line Args:", args)
    launch(
        _main_or_exit,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
