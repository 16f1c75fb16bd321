"""ImageNet weights the user supplies for a baseline the pipeline does not pretrain (the torchvision ResNets).

    python -m pipeline.weights --backbone resnet50_torchvision --source ~/weights/resnet50-0676ba61.pth \
        --output results/pretrain/imagenet/resnet50_torchvision/supplied/seed0/model.pth

The file is checked against the model (every key and shape) and written in the project's checkpoint layout,
with its origin and hash. At smoke scale with no file (`--allow-random`), a seeded random initialisation is
written instead and recorded as such, so the graph is the same at both scales.
"""

from __future__ import annotations

import argparse
import sys

import torch

import models
from pipeline.io import DiskFull, atomic_torch_save, file_sha256
from pipeline.logs import fail, setup_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="import user-supplied ImageNet weights for a baseline backbone")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--source", default="", help="checkpoint file (torchvision layout)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--allow-random", action="store_true", help="smoke scale: random init when no source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-file", help="also write the log to this file")
    args = parser.parse_args(argv)
    log = setup_logging(args.log_file, "weights")
    if not args.source and not args.allow_random:
        return fail(log, f"{args.backbone}: its rows start from ImageNet weights you supply; set "
                         f"pretrained_weights.{args.backbone} in config/config.yaml (or --config "
                         f"'pretrained_weights={{{args.backbone}: /path/to.pth}}') to a torchvision checkpoint of "
                         "that architecture")
    try:
        if args.source:
            model = models.create(args.backbone, pretrained=args.source)
            origin = {"source": args.source, "source_sha256": file_sha256(args.source)}
        else:
            torch.manual_seed(args.seed)
            model = models.create(args.backbone)
            origin = {"source": f"random init, seed {args.seed} (smoke scale: no ImageNet weights supplied)"}
    except (models.CheckpointError, KeyError) as e:
        return fail(log, str(e.args[0] if e.args else e))
    try:
        atomic_torch_save({"model": model.state_dict(), "arch": args.backbone, "img_size": 224, **origin},
                          args.output)
    except DiskFull as e:
        return fail(log, str(e))
    log.info("%s: %s -> %s", args.backbone, origin["source"], args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
