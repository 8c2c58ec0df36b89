"""Checkpoints: one self-contained file, written atomically, loaded with weights_only=True.

They carry model, EMA, optimizer, scheduler and scaler state, the phase, epoch and position in
the epoch, every RNG state, and the run's arguments (so `--eval-only` can rebuild the model).
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import torch

from manifests.manifest import atomic_write_bytes


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_as_tuple(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({**state, "rng": rng_states()}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say which and why
        raise ValueError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from None
