"""Generate a shard set: `python pipeline/generate.py [--source ...] [--out ...]`.

With no arguments: the built-in demo source, sharded on an embedded local Ray into demo_out/.
On a cluster: `ray submit docker/cluster.yaml pipeline/generate.py -- --source ... --out ...`
(only this file is uploaded; the package is installed in the cluster's image).
"""

import logging
import sys
from pathlib import Path

# Run as a script, Python puts pipeline/ itself on sys.path; drop it so that sibling modules are
# only ever imported as `pipeline.<name>` and can never shadow a top-level package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from manifests.objectstore import ObjectStoreError  # noqa: E402
from pipeline.job import JobError, run_job  # noqa: E402
from pipeline.job_config import config_from_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = config_from_args(argv)
    try:
        run_job(cfg)
    except (JobError, ValueError, ObjectStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
