"""A real two-node Ray cluster on this machine (Ray's own multi-node test cluster: a head and a
worker node, each its own raylet), the job submitted through the Jobs API (`ray job submit`), the
shards uploaded to an S3-compatible server (moto, loopback) by tasks on both nodes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from manifests import read_manifest, verify_shard_set

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_node_job(url: str) -> dict:
    """Start the two-node cluster, submit the job, return {node role: shard names}. Run in a process of
    its own (see the test): the test session's in-process Ray driver must not see this cluster."""
    from ray.cluster_utils import Cluster

    port = _free_port()
    # Ray's default temp folder, $TMPDIR/ray (the test session's private one): the Jobs API gives the
    # entrypoint the address recorded there, which must be this cluster's and not another live one's.
    # The nodes inherit this process's AWS_* settings, as nodes with credentials of their own would.
    # Each node's dashboard agent gets a free port of its own: at Ray's fixed default (52365) it cannot
    # bind while another Ray runs on this machine (the session's shared one), and a head without its
    # agent answers every `ray job submit` with "No available agent" for ever.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
        "dashboard_agent_listen_port": _free_port()})
    try:
        worker = cluster.add_node(num_cpus=1, dashboard_agent_listen_port=_free_port())
        cluster.wait_for_nodes()
        entrypoint = [sys.executable, str(REPO / "pipeline" / "generate.py"), "--source", "demo:400:48",
                      "--samples-per-shard", "20", "--workers", "2", "--variants", "0", "--out", url, "--no-progress"]
        submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{port}",
                  "--", *entrypoint]
        for _ in range(60):  # the head's job agent may start after the dashboard answers: Ray says "try again later"
            done = subprocess.run(submit, cwd=REPO, capture_output=True, text=True, timeout=300)
            if "No available agent to submit job" not in done.stdout + done.stderr:
                break
            time.sleep(2)
        if done.returncode != 0 or "succeeded" not in done.stdout:
            raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
        return {"head": cluster.head_node.node_id, "worker": worker.node_id}
    finally:
        cluster.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_job_submitted_to_a_two_node_cluster_writes_shards_from_both_nodes(s3, bucket):
    url = f"s3://{bucket}/multinode"
    # A fresh interpreter with a temp folder of its own, so nothing of the session's shared Ray is seen.
    own_tmp = tempfile.mkdtemp(prefix="mn")  # inside the session's; short, for Ray's socket paths
    done = subprocess.run([sys.executable, "-c", f"import json, tests.test_multinode as m; "
                           f"print(json.dumps(m.run_two_node_job({url!r})))"],
                          cwd=REPO, capture_output=True, text=True, timeout=450,
                          env={**os.environ, "TMPDIR": own_tmp})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    nodes = json.loads(done.stdout.strip().splitlines()[-1])
    records = s3.client().list_objects_v2(Bucket=bucket, Prefix="multinode/.progress/")["Contents"]
    writers = {}
    for item in records:
        record = json.loads(s3.client().get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        writers.setdefault(record["written_by"]["node_id"], []).append(record["name"])
    assert set(writers) == {nodes["head"], nodes["worker"]}, writers  # both nodes wrote shards
    roles = {node_id: role for role, node_id in nodes.items()}
    print("shards per node:", {f"{roles[node]} {node[:12]}": sorted(names) for node, names in writers.items()})
    assert len(read_manifest(url)["shards"]) == 20 and verify_shard_set(url) == []
