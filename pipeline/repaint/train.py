"""Training the repainter as a Ray Train job: E/G, D and the proxy task T, each its own DDP wrapper.

`train_repainter` runs a `TorchTrainer` whose storage lives in the job's output folder, so a rerun of
the same job resumes from the latest checkpoint reported through `ray.train.report` (Ray Train
restores the run by name and storage path); `FailureConfig` restarts failed workers from it too.
A checkpoint folder holds `repainter.pt` (E, G, config, step: what shard-time inference loads) and
`state.pt` (D, T and the optimizers: what a resume needs); both load with `weights_only=True`.
Batches, flips and codes are drawn from (seed, step, rank), so a resumed run draws what an
uninterrupted one would have. At the end, rank 0 measures the repainter on the held-out images
(`evaluate`): the proxy's top-1 on originals and on prior paintings, and `quality.measure_variants`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from tqdm import tqdm

from manifests.contract import derive_seed
from manifests.manifest import atomic_write_bytes

from .config import RepainterConfig
from .data import RepaintSet, to_model_inputs
from .paint import collect_style_bank, load_repainter, paint_variants, save_repainter
from .quality import measure_variants
from .steps import RepainterNets, train_step, unwrap

# Ray Train V2's defaults poll every 2 s and reconcile through the State API (which needs the
# dashboard): on a small local cluster that adds tens of seconds per fit. Users may override them.
RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
                 "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
TASK_FILE = "task.pt"  # the proxy task's final weights, beside repainter.pt
LOSS_COLUMNS = ("step", "d", "t", "g_total", "gan", "fm", "rec", "kld", "latent", "task", "seconds")


@dataclass
class TrainSettings:
    steps: int = 100  # iterations, each one E/G, one D and one T update
    batch_size: int = 16  # per worker
    size: int = 64  # the generator's working resolution
    checkpoint_every: int = 25
    workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool = False
    seed: int = 0
    max_failures: int = 2
    progress: bool = True


def _batch(data: RepaintSet, mine: np.ndarray, cfg: RepainterConfig, t: TrainSettings, step: int, rank: int,
           device: torch.device):
    rng = np.random.default_rng(derive_seed(t.seed, "batch", step, rank))
    idx = np.sort(rng.choice(mine, size=min(t.batch_size, len(mine)), replace=False))
    image, labels = to_model_inputs(data.images[idx], data.labels[idx], cfg.label_channels, cfg.structure)
    flip = torch.from_numpy(rng.random(len(idx)) < 0.5)  # mirrored images are as real as the originals
    image, labels = torch.where(flip[:, None, None, None], image.flip(-1), image), \
        torch.where(flip[:, None, None, None], labels.flip(-1), labels)
    target = torch.from_numpy(data.targets[idx])
    return image.to(device), labels.to(device), target.to(device)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def evaluate(nets: RepainterNets, val: RepaintSet, cfg: RepainterConfig, device: torch.device,
             seed: int = 0, batch_size: int = 32) -> dict:
    """On held-out images: T's top-1 on the originals and on variant paintings of the kind it trained
    on (prior, or from E's style bank; for COCO a hit is a top-1 category that is present), and the
    variant-quality figures of two such paintings per image (`quality.measure_variants`, at the
    training resolution)."""
    E, G, T = unwrap(nets.E).eval(), unwrap(nets.G).eval(), unwrap(nets.T).eval()
    hits = {"real": 0.0, "painted": 0.0}
    painted_all = []
    for i in range(0, len(val), batch_size):
        image, labels = to_model_inputs(val.images[i:i + batch_size], val.labels[i:i + batch_size],
                                        cfg.label_channels, cfg.structure)
        image, labels = image.to(device), labels.to(device)
        target = torch.tensor(val.targets[i:i + batch_size])
        seeds = [derive_seed(seed, "eval", i, v) for v in (0, 1)]
        pair = paint_variants(E, G, cfg, image, labels, seeds, latent=cfg.train_latent).chunk(2)
        painted_all.append(np.stack([_to_uint8(p) for p in pair], 1))
        for name, x in (("real", image), ("painted", pair[0])):
            top1 = T(x).argmax(1).cpu()
            hits[name] += float((target[torch.arange(len(top1)), top1] > 0).sum() if cfg.multilabel
                                else (top1 == target).sum())
    for m in (E, G, T):
        m.train()
    metrics = {f"proxy_acc_{k}": v / max(1, len(val)) for k, v in hits.items()}
    if painted_all:
        metrics["variant_quality"] = measure_variants(val.images, np.concatenate(painted_all), val.labels)
    return metrics


class LossLog:
    """losses.csv and TensorBoard on rank 0; a resume drops rows past the checkpoint it starts from."""

    def __init__(self, folder: Path, start: int):
        from tensorboardX import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "losses.csv"
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, LOSS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.tb = SummaryWriter(str(folder / "tb"), purge_step=start + 1)
        self.t0 = time.perf_counter()

    def write(self, step: int, losses: dict[str, float]) -> None:
        row = {"step": step, **{k: f"{losses[k]:.6g}" for k in LOSS_COLUMNS[1:-1] if k in losses},
               "seconds": f"{time.perf_counter() - self.t0:.2f}"}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, LOSS_COLUMNS).writerow(row)
        for k, v in losses.items():
            self.tb.add_scalar(f"repainter/{k}", v, step)

    def close(self) -> None:
        self.tb.close()


def _restore(nets: RepainterNets, checkpoint: Checkpoint | None, initial: str | None) -> int:
    """The step to start from: a Ray Train checkpoint of this run, else E/G from --repainter, else 0."""
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            _, E, G, info = load_repainter(Path(folder) / "repainter.pt")
            state = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=True)
        nets.E.load_state_dict(E.state_dict())
        nets.G.load_state_dict(G.state_dict())
        for name in ("D", "T"):
            getattr(nets, name).load_state_dict(state[name])
        for name, opt in nets.optimizers().items():
            opt.load_state_dict(state[name])
        return info["step"]
    if initial:
        _, E, G, _ = load_repainter(initial)
        nets.E.load_state_dict(E.state_dict())
        nets.G.load_state_dict(G.state_dict())
    return 0


def _report(nets: RepainterNets, step: int, metrics: dict, rank: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:  # every rank holds the same weights; one writes them
            save_repainter(Path(folder) / "repainter.pt", nets.cfg, unwrap(nets.E), unwrap(nets.G), step)
            state = {name: unwrap(getattr(nets, name)).state_dict() for name in ("D", "T")}
            state.update({name: opt.state_dict() for name, opt in nets.optimizers().items()})
            torch.save(state, Path(folder) / "state.pt")
            checkpoint = Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def numerics_of(device: torch.device) -> str:
    """What, besides the inputs and settings, decides the trained weights bit for bit: on CPU the
    vector ISA torch's kernels dispatch to (the same command trains a different repainter with
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 than on this machine's AVX-512), on GPU the device."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return f"cpu {torch.backends.cpu.get_cpu_capability()}"


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg, t = RepainterConfig(**config["model"]), TrainSettings(**config["training"])
    data, val = ray.get(config["data"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(t.cpus_per_worker)
    device = ray.train.torch.get_device() if t.use_gpu else torch.device("cpu")
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    nets = RepainterNets(cfg)
    start = _restore(nets, ray.train.get_checkpoint(), config.get("initial"))
    if start and rank == 0:
        print(f"repainter: resuming from the checkpoint of step {start}", flush=True)
    nets.to(device)
    if world > 1:
        nets.distribute([device.index] if device.type == "cuda" else None)
    mine = np.arange(rank, len(data), world)
    log = LossLog(Path(config["log_dir"]), start) if rank == 0 else None
    bar = tqdm(total=t.steps, initial=start, desc="repainter", unit="step", mininterval=10,
               disable=rank != 0 or not t.progress)
    for step in range(start, t.steps):
        batch = _batch(data, mine, cfg, t, step, rank, device)
        codes = torch.Generator().manual_seed(derive_seed(t.seed, "z", step, rank))
        losses = train_step(nets, *batch, step=step, generator=codes)
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"repainter step {step + 1}: non-finite loss {losses}")
        bar.update(1)
        bar.set_postfix({k: f"{losses[k]:.3g}" for k in ("d", "t", "rec", "g_total")})
        if log:
            log.write(step + 1, losses)
        if (step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps:
            metrics = {"step": step + 1, **losses}
            if step + 1 == t.steps and rank == 0:
                metrics["trained_on"] = numerics_of(device)
                encoder = unwrap(nets.E)
                encoder.style_bank = collect_style_bank(encoder, data.images, data.labels, cfg.label_channels,
                                                        seed=t.seed, structure=cfg.structure).to(device)
                if len(val):
                    metrics.update(evaluate(nets, val, cfg, device, t.seed))
            _report(nets, step + 1, metrics, rank)
    bar.close()
    if log:
        log.close()


def train_repainter(cfg: RepainterConfig, t: TrainSettings, data: RepaintSet, val: RepaintSet, folder: Path,
                    initial: str | None = None) -> tuple[Path, dict]:
    """Fit on Ray Train (resuming a run left in `folder`); return the final repainter.pt and metrics."""
    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    if len(data) < t.workers:
        raise ValueError(f"the repainter needs at least {t.workers} training images, got {len(data)}")
    folder.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"model": asdict(cfg), "training": asdict(t), "data": ray.put((data, val)),
                           "log_dir": str(folder / "logs"), "initial": initial},
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(name="run", storage_path=str(folder), failure_config=FailureConfig(t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"repainter training in {folder} ended without a checkpoint")
    final = folder / "repainter.pt"
    with result.checkpoint.as_directory() as checkpoint_dir:
        atomic_write_bytes(final, (Path(checkpoint_dir) / "repainter.pt").read_bytes())
        # T beside it, so the job can measure the proxy on the shards it writes (`quality.proxy_top1`)
        task = torch.load(Path(checkpoint_dir) / "state.pt", map_location="cpu", weights_only=True)["T"]
        buffer = io.BytesIO()
        torch.save(task, buffer)
        atomic_write_bytes(folder / TASK_FILE, buffer.getvalue())
    return final, dict(result.metrics or {})
