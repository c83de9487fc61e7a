"""A full training run: data, model, optimizer, schedule, checkpoints, resume, logs, DDP.

``fit(TrainConfig(model="lenet5", data="fashion-mnist", epochs=5), out="runs/lenet5")`` is what
``cnnlab train`` calls. Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DistributedDataParallel
(gloo on CPU, NCCL on GPU); only rank 0 prints and writes files.

Resume granularity: checkpoints are written at the end of every epoch, together with the RNG
states. A run killed at any point (SIGKILL included) and restarted with ``resume=True`` redoes
the epoch it was in from that epoch's start, so on CPU with a fixed seed it ends with weights
bit-identical to an uninterrupted run (``tests/test_train_resume.py``). The data order of an
epoch depends only on (seed, epoch), and the schedule is a function of the step.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cnnlab.data import build_loaders, data_channels, skipped_files
from cnnlab.io import CnnlabError, atomic_write_bytes
from cnnlab.registry import create_model
from cnnlab.train.checkpoint import (
    load_state,
    load_weights,
    read_meta,
    save_state,
    save_weights,
)
from cnnlab.train.loop import NonFiniteLossError, evaluate, run_epoch

__all__ = ["LRSchedule", "TrainConfig", "build_optimizer", "fit"]

DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
# Settings that may differ when resuming without changing the result.
RESUME_FREE = {"workers", "device"}


@dataclass
class TrainConfig:
    """Every setting of a run; saved as plain data with each checkpoint."""

    model: str
    data: str = "fashion-mnist"
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None  # None: 0.05 for SGD, 1e-3 for AdamW
    optimizer: str = "sgd"  # sgd (momentum 0.9, Nesterov) | adamw
    schedule: str = "cosine"  # cosine | step | onecycle | constant
    warmup_epochs: float = 0.0
    weight_decay: float | None = None  # None: 5e-4 for SGD, 0.05 for AdamW
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None
    aux_weight: float = 0.3
    img_size: int | None = None  # None: the model's native input size
    in_chans: int | None = None  # None: the data's channels (1 for Fashion-MNIST)
    augment: bool = False
    val_split: float | None = None
    limit: int | None = None
    strict: bool = False
    workers: int = 0
    seed: int = 0
    device: str | None = None  # None: CUDA when available, else CPU

    def __post_init__(self) -> None:
        if self.optimizer not in DEFAULT_LR:
            raise ValueError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in LRSchedule.KINDS:
            raise ValueError(f"schedule must be one of {', '.join(LRSchedule.KINDS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup epochs must be in [0, epochs], got {self.warmup_epochs}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def decay(self) -> float:
        wd = self.weight_decay
        return wd if wd is not None else DEFAULT_WEIGHT_DECAY[self.optimizer]


class LRSchedule:
    """The learning-rate factor as a function of the step (for ``LambdaLR``).

    * ``cosine``: half a cosine from 1 to 0 (Loshchilov & Hutter, 2017, without restarts);
    * ``step``: x0.1 at 50% and 75% of training (the ResNet recipe scaled to the run);
    * ``onecycle``: up from 1/25 to 1 over the first 30% (cosine), then down to 1/(25 * 1e4)
      (Smith & Topin, 2018, with PyTorch's OneCycleLR defaults);
    * ``constant``.

    A linear warm-up from 0 over ``warmup_steps`` precedes all but ``onecycle``. The object
    holds only numbers, so ``LambdaLR.state_dict`` stays plain data.
    """

    KINDS = ("cosine", "step", "onecycle", "constant")

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0) -> None:
        self.kind, self.total, self.warmup = kind, max(1, total_steps), warmup_steps

    def __call__(self, step: int) -> float:
        if self.kind == "onecycle":
            up = 0.3 * self.total
            if step < up:
                return _cos(1 / 25, 1.0, step / up)
            return _cos(1.0, 1 / 25e4, (step - up) / max(1.0, self.total - up))
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        if self.kind == "cosine":
            return _cos(1.0, 0.0, t)
        if self.kind == "step":
            return 0.1 ** ((t >= 0.5) + (t >= 0.75))
        return 1.0


def _cos(start: float, end: float, t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, Nesterov) or AdamW; no weight decay on biases and norm scales."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(_tuples(state["python"]))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def _setup_distributed(device: str | None) -> tuple[torch.device, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local), rank, world
    return torch.device(device or "cpu"), rank, world


def _write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())


def _check_resume(saved: dict[str, Any], cfg: TrainConfig) -> None:
    now = asdict(cfg)
    diff = [
        f"{k} {saved.get(k)!r} -> {now[k]!r}"
        for k in now
        if k not in RESUME_FREE and saved.get(k) != now[k]
    ]
    if diff:
        raise CnnlabError(
            "--resume needs the settings of the interrupted run; changed: " + ", ".join(diff)
        )


def fit(
    cfg: TrainConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    progress: bool = True,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; write checkpoints, metrics.csv and TensorBoard
    events to ``out``; return a summary (final and best validation figures, times, paths).

    A NaN or infinite loss raises ``CnnlabError`` naming the step (``last.*`` keep the last
    good epoch). Ctrl-C writes ``interrupted.safetensors`` and returns with
    ``summary["interrupted"] = True``; ``resume=True`` continues from ``last.*``.
    """
    device, rank, world = _setup_distributed(cfg.device)
    try:
        return _fit(
            cfg,
            Path(out),
            resume,
            log if rank == 0 else None,
            progress,
            tensorboard,
            device,
            rank,
            world,
        )
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _fit(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    log: Callable[[str], None] | None,
    progress: bool,
    tensorboard: bool,
    device: torch.device,
    rank: int,
    world: int,
) -> dict[str, Any]:
    say = log or (lambda _msg: None)
    writes = rank == 0
    last_w, last_s, best_w = (
        out / "last.safetensors",
        out / "last.state.pt",
        out / "best.safetensors",
    )
    state: dict[str, Any] | None = None
    if resume:
        if not last_s.is_file():
            raise CnnlabError(f"nothing to resume: {str(last_s)!r} does not exist")
        state = load_state(last_s)
        _check_resume(state["config"], cfg)
        if read_meta(last_w).get("step") != state["step"]:
            raise CnnlabError(
                f"{str(last_w)!r} and {str(last_s)!r} are from different steps (the run was "
                "killed while saving); restart without --resume"
            )
    elif writes and last_s.exists():
        raise CnnlabError(
            f"{str(out)!r} already holds a run; pass --resume to continue it or another --out"
        )
    if writes:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    in_chans = cfg.in_chans or data_channels(cfg.data)
    with torch.device("meta"):
        probe = create_model(cfg.model, num_classes=10, in_chans=in_chans)
    img_size = cfg.img_size or int(probe.input_size[-1])
    train_loader, val_loader, classes = build_loaders(
        cfg.data,
        img_size=img_size,
        in_chans=in_chans,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        augment=cfg.augment,
        val_split=cfg.val_split,
        seed=cfg.seed,
        limit=cfg.limit,
        strict=cfg.strict,
    )
    skipped = skipped_files(train_loader) + skipped_files(val_loader)
    model = create_model(cfg.model, num_classes=len(classes), in_chans=in_chans).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    steps = len(train_loader)
    schedule = LRSchedule(cfg.schedule, steps * cfg.epochs, round(cfg.warmup_epochs * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    pre = train_loader.dataset
    while hasattr(pre, "dataset"):
        pre = pre.dataset
    preprocess = pre.pre.as_dict()
    meta = {"model": cfg.model, "class_names": classes, "preprocess": preprocess}

    start_epoch, step, history, best = 0, 0, [], -1.0
    if state is not None:
        load_weights(model, last_w, strict_aux=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"], state["step"]
        history, best = state["history"], state["best_top1"]
        _set_rng_state(state["rng"])
        say(f"resuming {cfg.model} from {str(last_w)!r} after epoch {start_epoch}")
    net: nn.Module = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    writer = None
    if writes and tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_epoch + 1)
    say(
        f"training {cfg.model} on {cfg.data}: {len(train_loader.dataset):,} train / "
        f"{len(val_loader.dataset):,} val images at {img_size}x{img_size}x{in_chans}, "
        f"{cfg.epochs} epochs of {steps} steps, {world} process(es) on {device.type}"
    )
    interrupted = False
    last_val: dict[str, Any] = history[-1] if history else {}
    train_time = train_images = 0.0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_loader.sampler.set_epoch(epoch)
            bar = _progress(progress and writes, epoch, cfg.epochs, steps * train_loader.batch_size)
            t0 = time.perf_counter()
            try:
                stats = run_epoch(
                    net,
                    train_loader,
                    optimizer,
                    device=device,
                    scheduler=scheduler,
                    clip_grad_norm=cfg.clip_grad_norm,
                    aux_weight=cfg.aux_weight,
                    loss_fn=loss_fn,
                    on_batch=bar.update if bar else None,
                )
            except NonFiniteLossError as exc:
                kept = "no checkpoint was written"
                if history:
                    kept = f"the last good checkpoint is {str(last_w)!r} (epoch {len(history)})"
                raise CnnlabError(
                    f"loss is {exc.value} at step {step + exc.batch + 1} (epoch {epoch + 1}, "
                    f"batch {exc.batch + 1}); stopped; {kept}"
                ) from None
            finally:
                if bar:
                    bar.close()
            seconds = time.perf_counter() - t0
            train_time += seconds
            train_images += stats["images"]
            step += steps
            val = evaluate(net, val_loader, device=device)
            row = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": round(stats["loss"], 6),
                "train_top1": round(stats["top1"], 6),
                "val_loss": round(val["loss"], 6),
                "val_top1": round(val["top1"], 6),
                "val_top5": round(val["top5"], 6),
                "lr": optimizer.param_groups[0]["lr"],
                "train_seconds": round(seconds, 3),
                "images_per_second": round(stats["images"] / seconds, 1),
            }
            history.append(row)
            last_val = row
            if writes:
                meta_now = {**meta, "epoch": epoch + 1, "step": step}
                if val["top1"] > best:
                    best = val["top1"]
                    save_weights(model, best_w, {**meta_now, "val_top1": best}, drop_aux=True)
                save_weights(model, last_w, meta_now)
                save_state(
                    {
                        "config": asdict(cfg),
                        "epoch": epoch + 1,
                        "step": step,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": _rng_state(),
                        "history": history,
                        "best_top1": best,
                    },
                    last_s,
                )
                _write_csv(out / "metrics.csv", history)
                if writer is not None:
                    for key in (
                        "train_loss",
                        "train_top1",
                        "val_loss",
                        "val_top1",
                        "val_top5",
                        "lr",
                    ):
                        writer.add_scalar(key.replace("_", "/", 1), row[key], epoch + 1)
                    writer.flush()
            say(
                f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
                f"top-1 {row['train_top1']:.2%}  val loss {row['val_loss']:.4f} "
                f"top-1 {row['val_top1']:.2%} top-5 {row['val_top5']:.2%}  "
                f"lr {row['lr']:.3g}  {seconds:.1f}s ({row['images_per_second']:,.0f} img/s)"
            )
    except KeyboardInterrupt:
        interrupted = True
        if writes:
            save_weights(model, out / "interrupted.safetensors", {**meta, "step": -1})
        done = history[-1]["epoch"] if history else 0
        say(
            f"interrupted: weights saved to {str(out / 'interrupted.safetensors')!r}; "
            f"--resume continues from the end of epoch {done}"
        )
    finally:
        if writer is not None:
            writer.close()
    if skipped:
        say(f"skipped {len(skipped)} corrupt image(s): {', '.join(skipped[:5])}")
    return {
        "model": cfg.model,
        "data": cfg.data,
        "epochs": len(history),
        "interrupted": interrupted,
        "val_top1": last_val.get("val_top1"),
        "val_top5": last_val.get("val_top5"),
        "val_loss": last_val.get("val_loss"),
        "best_top1": best if best >= 0 else None,
        "train_seconds": round(train_time, 2),
        "images_per_second": round(train_images / train_time, 1) if train_time else None,
        "skipped_images": skipped,
        "out": str(out),
        "weights": str(best_w),
        "world_size": world,
        "device": str(device),
        "history": history,
    }


class _Bar:
    """tqdm progress bar fed per batch with images/s, loss and running top-1."""

    def __init__(self, epoch: int, epochs: int, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            unit="img",
            unit_scale=True,
            leave=False,
            desc=f"epoch {epoch + 1}/{epochs}",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.correct = self.seen = 0

    def update(self, n: int, loss: float, hits: int, i: int) -> None:
        self.correct += hits
        self.seen += n
        self.bar.update(n)
        if i % 10 == 0:
            self.bar.set_postfix(
                loss=f"{loss:.3f}", top1=f"{self.correct / self.seen:.1%}", refresh=False
            )

    def close(self) -> None:
        self.bar.close()


def _progress(on: bool, epoch: int, epochs: int, total: int) -> _Bar | None:
    return _Bar(epoch, epochs, total) if on else None


CONFIG_FIELDS = [f.name for f in fields(TrainConfig)]
