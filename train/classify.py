"""Train a classifier on a shard set: `torchrun --nproc_per_node=G train/classify.py --shards PATH ...`.

Phase 1 (`--epochs`): repainted variants (or the original, `--orig-prob`) with online mixing
(`--mix sage|mixup|cutmix|none`). Phase 2 (`--finetune-epochs`): the originals only, with a fresh
LR schedule. `--eval-only --checkpoint CKPT --val PATH` evaluates a checkpoint.
"""

import sys
from pathlib import Path

# Run as a script, Python puts train/ itself on sys.path; drop it so that sibling modules are
# only ever imported as `train.<name>` and can never shadow a top-level package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from train.classification import ClassificationTask  # noqa: E402
from train.runner import cli_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, ClassificationTask())


if __name__ == "__main__":
    sys.exit(main())
