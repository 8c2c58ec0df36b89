"""bench/gpu_check.sh runs anywhere: without a GPU it says so and exits 0 (CI never has one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run bench/gpu_check.sh itself")
def test_gpu_check_says_no_gpu_on_cpu():
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no GPU" in done.stdout
