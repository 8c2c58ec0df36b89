"""Train an EfficientDet on a COCO shard set: `torchrun --nproc_per_node=G train/detect.py --shards PATH ...`.

Phase 1 (`--epochs`): repainted variants (or the original, `--orig-prob`), every variant reusing
the original's boxes. Phase 2 (`--finetune-epochs`): the originals only, with a fresh LR schedule.
Evaluation is pycocotools' COCOeval (bbox) on `--val`. No SAGE here: see `--help`.
"""

import sys
from pathlib import Path

# Run as a script, Python puts train/ itself on sys.path; drop it so that sibling modules are
# only ever imported as `train.<name>` and can never shadow a top-level package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from train.detection import DetectionTask  # noqa: E402
from train.runner import cli_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, DetectionTask())


if __name__ == "__main__":
    sys.exit(main())
