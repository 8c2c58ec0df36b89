"""The Ray task that writes one shard, in a module of its own.

A Ray worker imports the module of every function it runs. `_write_shard_task` used to live in
`pipeline/job.py`, whose imports reach the repainter (torch, Ray Train, timm): each worker paid
7-12 s of imports on its first shard of a `--variants 0` job (measured on the 2-core machine: the
first of 16 COCO-sized shards took 7 s, each later one 0.35 s). Here a worker imports only ray and
`pipeline.shards`. Ray is imported by the orchestration modules alone (tests/test_contract.py).
"""

from __future__ import annotations

import socket

import ray

from .shards import write_shard


def node_origin() -> dict:
    """Which Ray node and host a shard was written on, for its done-record (the manifest never holds
    it: node ids change from run to run)."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}


def write_shard_task(*args) -> dict:
    """`shards.write_shard` on a Ray worker, its done-record naming the node."""
    return write_shard(*args, origin=node_origin())
