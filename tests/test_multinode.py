"""A real two-node Ray cluster on this machine (Ray's own multi-node test cluster: a head and a
worker node, each its own raylet), the job submitted through the Jobs API (`ray job submit`), the
shards uploaded to an S3-compatible server (moto, loopback) by tasks on both nodes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manifests import read_manifest, verify_shard_set

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_job_submitted_to_a_two_node_cluster_writes_shards_from_both_nodes(s3, bucket):
    from ray.cluster_utils import Cluster

    port = _free_port()
    # Ray's default temp folder, $TMPDIR/ray (the test session's private one): the Jobs API gives the
    # entrypoint the address recorded there, which must be this cluster's and not another live one's.
    # The nodes inherit this process's AWS_* settings (the `bucket` fixture set them), as nodes with
    # credentials of their own would.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        url = f"s3://{bucket}/multinode"
        entrypoint = [sys.executable, str(REPO / "pipeline" / "generate.py"), "--source", "demo:400:48",
                      "--samples-per-shard", "20", "--workers", "2", "--variants", "0", "--out", url, "--no-progress"]
        submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{port}",
                  "--", *entrypoint]
        for _ in range(60):  # the head's job agent may start after the dashboard answers: Ray says "try again later"
            done = subprocess.run(submit, cwd=REPO, capture_output=True, text=True, timeout=400)
            if "No available agent to submit job" not in done.stdout + done.stderr:
                break
            time.sleep(2)
        assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
        records = s3.client().list_objects_v2(Bucket=bucket, Prefix="multinode/.progress/")["Contents"]
        writers = {}
        for item in records:
            record = json.loads(s3.client().get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            writers.setdefault(record["written_by"]["node_id"], []).append(record["name"])
        assert set(writers) == {cluster.head_node.node_id, worker.node_id}, writers  # both nodes wrote shards
        roles = {cluster.head_node.node_id: "head", worker.node_id: "worker"}
        print("shards per node:", {f"{roles[node]} {node[:12]}": sorted(names) for node, names in writers.items()})
        assert len(read_manifest(url)["shards"]) == 20 and verify_shard_set(url) == []
    finally:
        cluster.shutdown()
