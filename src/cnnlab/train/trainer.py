"""A full training run: data, model, optimizer, schedule, checkpoints, resume, logs, DDP.

``fit(TrainConfig(model="lenet5", data="fashion-mnist", epochs=5), out="runs/lenet5")`` is what
``cnnlab train`` calls. Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DistributedDataParallel
(gloo on CPU, NCCL on GPU); only rank 0 prints and writes files.

A run goes through named phases that share a :class:`_Run`: ``_open_state`` (a new folder, or
the state to resume), ``_setup`` (seeds, data, model: fresh or from ``init_from``, freezing,
optimizer), ``_resume``, then per epoch ``_epoch`` (train + validate) and ``_checkpoint``, and
``_report``. An existing folder is locked first (:class:`~cnnlab.train.checkpoint.RunLock`,
which also finishes an interrupted commit and removes stale temp files); a new one is created
and locked only after ``_setup`` has checked every option. ``last.*`` are committed as one
unit (:func:`~cnnlab.train.checkpoint.commit_checkpoint`).

Resume granularity: checkpoints are written at the end of every epoch, together with the RNG
states. A run killed at any point (SIGKILL included) and restarted with ``resume=True`` redoes
the epoch it was in from that epoch's start, so on CPU with a fixed seed it ends with weights
bit-identical to an uninterrupted run (``tests/test_train_resume.py``). The data order of an
epoch depends only on (seed, epoch), and the schedule is a function of the step.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cnnlab.config import MAX_FACTOR, option
from cnnlab.data import (
    FASHION_MNIST_NAMES,
    IMAGE_SUFFIXES,
    build_loaders,
    data_channels,
    data_source,
    fashion_mnist_folder,
    open_image,
    skipped_files,
)
from cnnlab.devices import (
    PARALLEL_PER_CPU,
    PRECISIONS,
    autocast_dtype,
    compiled,
    max_parallel,
    resolve_device,
    reuse_freed_memory,
)
from cnnlab.errors import CnnlabError
from cnnlab.factory import load_pretrained
from cnnlab.registry import COMMON_KEYWORDS, build_model, build_on_meta, model_info
from cnnlab.saved import MAX_IMG_SIZE, SCALARS, load_weights, read_meta, save_weights
from cnnlab.train.checkpoint import (
    LAST_STATE,
    LAST_WEIGHTS,
    MANIFEST,
    RunLock,
    commit_checkpoint,
    load_state,
    recover_checkpoint,
    remove_stale_files,
    rng_state,
    save_interrupted,
    set_rng_state,
    write_metrics_csv,
)
from cnnlab.train.finetune import freeze, frozen_modules
from cnnlab.train.loop import NonFiniteLossError, evaluate, run_epoch
from cnnlab.weight_grads import SMALL_MAP_GRADS, small_map_grads_wanted

__all__ = ["LRSchedule", "TrainConfig", "build_optimizer", "fit"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "constant")
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
MAX_SEED = 2**63 - 1
# What the run sets itself: the classes come from the data, the channels from --in-chans, the
# weights from --init-from (init, the paper's or another scheme, stays the model's to take).
RUN_KEYWORDS = tuple(k for k in COMMON_KEYWORDS if k != "init")
MIN_STEPS, STEPS_TARGET = 300, 500  # below MIN_STEPS optimizer steps in a run: a note
# Settings that may differ when resuming without changing the result.
RESUME_FREE = {"workers", "device", "precision", "channels_last", "compile", "reuse_memory",
               "small_map_grads"}  # fmt: skip


@dataclass
class TrainConfig:
    """Every setting of a run; saved as plain data with each checkpoint. Each field is an
    option of ``cnnlab train`` (``--batch-size`` for ``batch_size``), with the help text in
    its metadata; every value is checked here, before any work."""

    model: str = field(metadata={"help": "a registered model name (see `cnnlab models`)"})
    data: str = option("fashion-mnist", "fashion-mnist, a folder (IDX files or ImageFolder), "
                     "or synthetic")  # fmt: skip
    epochs: int = option(10, "training epochs")
    batch_size: int | None = option(
        None, "global batch, all processes (default 128; on a small training set the power of "
        "two that gives ~100 steps per epoch, at least 16)",
    )  # fmt: skip
    lr: float | None = option(
        None,
        "learning rate (default: sgd 0.05, or the paper's where "
        "0.05 diverges (cnnlab models NAME); adamw 1e-3)",
    )
    optimizer: str = option("sgd", "SGD (momentum 0.9, Nesterov) or AdamW", choices=OPTIMIZERS)
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES)
    warmup_epochs: float = option(0.0, "linear warm-up epochs (not with onecycle)")
    weight_decay: float | None = option(None, "weight decay (default 5e-4 for sgd, 0.05 for adamw)")
    label_smoothing: float = option(0.0, "label smoothing, in [0, 1)")
    clip_grad_norm: float | None = option(None, "clip the gradient norm to this value")
    aux_weight: float = option(0.3, "auxiliary heads' loss weight (GoogLeNet)")
    img_size: int | None = option(None, "input side (default: the model's native size)")
    in_chans: int | None = option(None, "input channels (default: the data's)", choices=(1, 3))
    augment: bool = option(False, "random crop + flip + erasing")
    val_split: float | None = option(None, "hold out this fraction of a single folder")
    limit: int | None = option(None, "use only the first N images of each split")
    strict: bool = option(False, "a corrupt image is an error")
    workers: int = option(0, "DataLoader worker processes")
    seed: int = option(0, "seed of the weights, the data order and the split")
    device: str | None = option(None, "cpu or cuda (default: cuda if available)")
    precision: str | None = option(
        None, "fp32, bf16 (autocast) or auto: bf16 where the device computes it natively (AMX "
        "or AVX512-BF16 CPUs, GPUs) (default: bf16 on a GPU, fp32 on a CPU)",
        choices=PRECISIONS,
    )  # fmt: skip
    channels_last: bool = option(
        True, "keep the weights NCHW; by default they are channels-last (NHWC), the layout "
        "oneDNN's and cuDNN's convolutions prefer (up to 2x faster CPU training steps, "
        "docs/performance.md)",
    )  # fmt: skip
    compile: bool = option(
        False, "torch.compile the model (inductor; the first steps of training and of "
        "validation compile it)",
    )  # fmt: skip
    reuse_memory: bool = option(
        True, "return freed memory to the OS at once (glibc's default); by default the process "
        "keeps it for the next step, which skips the page faults of fresh memory: 1.2-2.4x "
        "faster CPU steps at 224 px for up to 37% more peak memory (docs/performance.md)",
    )  # fmt: skip
    small_map_grads: str = option(
        "auto", "take the weight gradients of convolutions on maps of 7x7 and below as forward "
        "convolutions (cnnlab.weight_grads; CPU and fp32 only, not compiled): resnet18 trains "
        "1.6x faster at 32 px on an AVX2 CPU; auto: on where PyTorch's CPU capability is AVX2 "
        "(docs/performance.md)", choices=SMALL_MAP_GRADS,
    )  # fmt: skip
    init_from: str | None = option(
        None, "start from these weights: a run folder, a .safetensors, a .cnz, or "
        "torchvision:PATH / timm:PATH (a new classifier where the data's classes differ)",
        metavar="SRC",
    )  # fmt: skip
    model_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "the model's own keywords, e.g. drop_path_rate=0.1 shortcut=A "
                          "(see `cnnlab models NAME`)"},
    )  # fmt: skip
    freeze_backbone: bool = option(False, "train only the classifier (get_classifier())")
    freeze: str | None = option(
        None, "freeze every layer up to and including this one (registration order)",
        metavar="LAYER",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check(isinstance(self.model, str) and bool(self.model), "model", "a model name",
               self.model)  # fmt: skip
        _check(self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}",
               self.optimizer)  # fmt: skip
        _check(self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}",
               self.schedule)  # fmt: skip
        _check(_int(self.epochs, 1), "epochs", "an integer >= 1", self.epochs)
        _check(self.batch_size is None or _int(self.batch_size, 1), "batch_size",
               "an integer >= 1", self.batch_size)  # fmt: skip
        for name in ("lr", "clip_grad_norm"):
            value = getattr(self, name)
            _check(value is None or _real(value, 0, MAX_FACTOR, open_low=True), name,
                   "a number > 0, at most 3.4e38 (float32)", value)  # fmt: skip
        _check(self.weight_decay is None or _real(self.weight_decay, 0, MAX_FACTOR),
               "weight_decay", "a number >= 0, at most 3.4e38 (float32)",
               self.weight_decay)  # fmt: skip
        _check(self.img_size is None or _int(self.img_size, 1, MAX_IMG_SIZE), "img_size",
               f"an integer in 1..{MAX_IMG_SIZE}", self.img_size)  # fmt: skip
        _check(self.in_chans in (None, 1, 3), "in_chans", "1 or 3", self.in_chans)
        _check(_real(self.warmup_epochs, 0, self.epochs if _int(self.epochs, 1) else None),
               "warmup_epochs", "a number in [0, epochs]", self.warmup_epochs)  # fmt: skip
        _check(_real(self.label_smoothing, 0, 1, open_high=True), "label_smoothing",
               "in [0, 1)", self.label_smoothing)  # fmt: skip
        _check(_real(self.aux_weight, 0), "aux_weight", "a finite number >= 0", self.aux_weight)
        _check(_int(self.seed, 0, MAX_SEED), "seed", "an integer in [0, 2**63 - 1]", self.seed)
        _check(_int(self.workers, 0, max_parallel()), "workers",
               f"an integer in 0..{max_parallel()} ({PARALLEL_PER_CPU} per usable CPU)",
               self.workers)  # fmt: skip
        _check(self.limit is None or _int(self.limit, 1), "limit", "an integer >= 1", self.limit)
        _check(self.val_split is None or _real(self.val_split, 0, 1, True, True), "val_split",
               "in (0, 1)", self.val_split)  # fmt: skip
        for name in ("init_from", "freeze", "device", "data"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, str) and bool(value)), name,
                   "a non-empty string", value)  # fmt: skip
        _check(isinstance(self.model_kwargs, dict) and all(
            isinstance(k, str) and isinstance(v, SCALARS) for k, v in self.model_kwargs.items()
        ), "model_kwargs", "a dict of names to plain values", self.model_kwargs)  # fmt: skip
        _check(not set(self.model_kwargs) & set(RUN_KEYWORDS), "model_kwargs",
               f"the model's own keywords, not {', '.join(RUN_KEYWORDS)} (the data sets the "
               "classes, --in-chans the channels, --init-from the weights)",
               self.model_kwargs)  # fmt: skip
        _check(self.small_map_grads in SMALL_MAP_GRADS, "small_map_grads",
               f"one of {', '.join(SMALL_MAP_GRADS)}", self.small_map_grads)  # fmt: skip
        _check(self.precision in (None, *PRECISIONS), "precision",
               f"one of {', '.join(PRECISIONS)}", self.precision)  # fmt: skip
        if self.freeze_backbone and self.freeze is not None:
            raise ValueError("freeze_backbone and freeze are mutually exclusive")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        paper = model_info(self.model).get("train_lr") if self.optimizer == "sgd" else None
        return paper or DEFAULT_LR[self.optimizer]

    @property
    def decay(self) -> float:
        wd = self.weight_decay
        return wd if wd is not None else DEFAULT_WEIGHT_DECAY[self.optimizer]


def _check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def _int(x: Any, low: int, high: int | None = None) -> bool:
    """``x`` is an int (not a bool) in [low, high]."""
    if isinstance(x, bool) or not isinstance(x, int):
        return False
    return low <= x and (high is None or x <= high)


def _real(x: Any, low: float, high: float | None = None, open_low: bool = False,
          open_high: bool = False) -> bool:  # fmt: skip
    """``x`` is a finite real number in the interval (open at either end where asked)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return False
    above = x > low if open_low else x >= low
    below = high is None or (x < high if open_high else x <= high)
    return above and below


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

    KINDS = SCHEDULES

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


def build_optimizer(
    model: nn.Module,
    optimizer: str,
    lr: float,
    weight_decay: float,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    decay_1d: bool = False,
) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov unless ``nesterov=False``) or AdamW, over the parameters
    that require gradients (frozen ones stay out). Biases and norm scales (1-d tensors) get no
    weight decay unless ``decay_1d`` ("no bias decay": He et al., 2019, "Bag of Tricks for
    Image Classification", section 3.1). Training uses the defaults; Deep Compression's
    retraining decays every parameter, without Nesterov."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CnnlabError("the model has no trainable parameters (everything is frozen)")
    if decay_1d:
        groups = [{"params": params, "weight_decay": weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    return torch.optim.AdamW(groups, lr=lr)


def _setup_distributed(device: str | None) -> tuple[torch.device, int, int]:
    """(device, rank, world size); ``device`` is checked by :func:`resolve_device` first (a
    missing GPU or an unknown device is one error line). Under torchrun each process on CUDA
    takes the GPU of its ``LOCAL_RANK``."""
    resolved = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = resolved.type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else resolved.index or 0
        torch.cuda.set_device(local)
        return torch.device("cuda", local), rank, world
    return resolved, rank, world


def _check_resume(state: dict[str, Any], cfg: TrainConfig, stored_size: Any) -> None:
    """The settings must be the saved run's, but for RESUME_FREE ones and ``epochs``, which
    may grow (to extend the run), never below the epochs already done. Two spellings of one
    setting agree: the data by what it reads, a default and its value (``--img-size``: the
    ``stored_size`` of the run's weights; ``--batch-size``: the run's own)."""
    saved, now = state["config"], asdict(cfg)
    defaults = asdict(TrainConfig(model=cfg.model))  # a field newer than the saved state
    diff = [
        f"{k} {saved.get(k, defaults[k])!r} -> {now[k]!r}"
        for k in now
        if k not in RESUME_FREE | {"epochs"}
        and not _same_setting(k, saved.get(k, defaults[k]), now[k], stored_size)
    ]
    if diff:
        raise CnnlabError(
            "--resume needs the settings of the interrupted run; changed: " + ", ".join(diff)
        )
    if cfg.epochs < state["epoch"]:
        raise CnnlabError(
            f"--resume: the run has done {state['epoch']} epochs already; --epochs "
            f"{cfg.epochs} is fewer (pass at least {state['epoch']})"
        )


def _same_setting(key: str, saved: Any, now: Any, stored_size: Any) -> bool:
    if saved == now or (key == "batch_size" and now is None):
        return True
    if key == "img_size":
        return (saved or stored_size) == (now or stored_size)
    if key == "data" and isinstance(saved, str) and isinstance(now, str):
        return data_source(saved) == data_source(now)
    return False


@dataclass
class _Run:
    """What the phases of one run share: the built pieces, then the counters they advance."""

    cfg: TrainConfig
    out: Path
    say: Callable[[str], None]
    writes: bool  # rank 0: prints and writes files
    device: torch.device
    dtype: torch.dtype | None  # autocast (cfg.precision on this device); None: fp32
    small_map_grads: bool  # cfg.small_map_grads on this device (cnnlab.weight_grads)
    world: int
    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: nn.Module
    train_loader: Any
    val_loader: Any
    meta: dict[str, Any]  # what every checkpoint's metadata holds
    img_size: int
    in_chans: int
    skipped: list[str]
    schedule: LRSchedule
    start_epoch: int = 0
    saved_epoch: int = 0  # the epoch of the last committed checkpoint (0: none)
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -1.0
    train_time: float = 0.0
    train_images: int = 0
    interrupted: bool = False

    @property
    def last_w(self) -> Path:
        return self.out / LAST_WEIGHTS

    @property
    def last_s(self) -> Path:
        return self.out / LAST_STATE


def _open_state(cfg: TrainConfig, out: Path, resume: bool, writes: bool) -> dict[str, Any] | None:
    """Phase 1: the saved training state ``--resume`` continues from (checked against
    ``cfg`` and its weights file), or None for a new run in a folder that holds none."""
    last_w, last_s = out / LAST_WEIGHTS, out / LAST_STATE
    if not resume:
        if writes and (last_s.exists() or (out / MANIFEST).exists()):
            raise CnnlabError(
                f"{str(out)!r} already holds a run; pass --resume to continue it or another --out"
            )
        return None
    if not last_s.is_file():
        raise CnnlabError(f"nothing to resume: {str(last_s)!r} does not exist")
    state, meta = load_state(last_s), read_meta(last_w)
    _check_resume(state, cfg, meta.get("preprocess", {}).get("size"))
    if meta.get("step") != state["step"]:
        raise CnnlabError(
            f"{str(last_w)!r} and {str(last_s)!r} are from different steps (files of "
            "different runs, or of an older cnnlab killed while saving): this run cannot be "
            "resumed; start a new one with another --out"
        )
    return state


def _data_size(data: str) -> int | None:
    """The side of ``data``'s own images where cheap to tell: 28 for Fashion-MNIST, the
    shorter side of the first image of an ImageFolder (header only); else None."""
    if data in FASHION_MNIST_NAMES:
        return 28
    root = Path(data)
    if not root.is_dir():
        return None
    if fashion_mnist_folder(root) is not None:
        return 28
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with open_image(path) as img:
                        return min(img.size)
                except CnnlabError:
                    continue
    return None


def _input_size(
    cfg: TrainConfig, probe: nn.Module, say: Callable[[str], None], resume: bool, out: Path
) -> int:
    """``--img-size``, else the model's native size; but where the data's own images are at
    most half that size, the data's size (at least the model's minimum), said in one line:
    upscaling 28x28 images to 224x224 costs 64x the compute and adds nothing. A resumed run
    keeps the size its checkpoint records (a run begun before this rule keeps its own)."""
    if resume and not cfg.img_size:
        stored = read_meta(out / LAST_WEIGHTS).get("preprocess", {}).get("size")
        if isinstance(stored, int) and not isinstance(stored, bool) and stored > 0:
            return stored
    native = int(probe.input_size[-1])
    data = None if cfg.img_size else _data_size(cfg.data)
    if cfg.img_size or data is None or data * 2 > native:
        return cfg.img_size or native
    size = max(data, int(getattr(probe, "min_input_size", None) or 1))
    say(f"training at {size}x{size}, near the data's own {data}x{data}: {cfg.model}'s "
        f"native {native}x{native} would upscale every image {native / data:.0f}x (pass "
        f"--img-size {native} for that)")  # fmt: skip
    return size


def _init_source(cfg: TrainConfig, in_chans: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model holding ``cfg.init_from``'s weights, and that file's metadata."""
    model, meta = load_pretrained(cfg.model, cfg.init_from, **cfg.model_kwargs)
    if meta["in_chans"] != in_chans:
        raise CnnlabError(
            f"--init-from {cfg.init_from!r} holds {meta['model']} for {meta['in_chans']}-channel "
            f"input, but training would feed it {in_chans}; pass --in-chans {meta['in_chans']}"
            + (" (grey images are repeated to RGB)" if meta["in_chans"] == 3 else "")
        )
    return model, meta


def _build_model(
    cfg: TrainConfig, classes: list[str], in_chans: int, source: Any, say: Callable[[str], None]
) -> nn.Module:
    """A fresh model, or the ``init_from`` one; its classifier is replaced by a new one when
    the data's classes differ from the source's (in number, or in name where it stores them)."""
    if source is None:
        return build_model(cfg.model, len(classes), in_chans, **cfg.model_kwargs)
    model, meta = source
    head = ""
    named = "class_names" not in meta["assumed"]
    if meta["num_classes"] != len(classes) or (named and meta["class_names"] != classes):
        model.reset_classifier(len(classes))
        head = f"; new classifier for {len(classes)} classes (the source had {meta['num_classes']})"
    say(f"initialised from {meta['path']!r} ({meta['kind']} weights of {meta['model']}){head}")
    return model


def _setup(
    cfg: TrainConfig, out: Path, resume: bool, say: Callable[[str], None], writes: bool,
    device: torch.device, world: int,
) -> _Run:  # fmt: skip
    """Phase 2: seeds, data, model (fresh or from ``init_from``), freezing, optimizer,
    schedule. Every option that needs the model is checked before the data is read."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    in_chans = cfg.in_chans or data_channels(cfg.data)
    probe = build_on_meta(cfg.model, 10, in_chans, **cfg.model_kwargs)  # bad keywords fail here
    frozen_modules(probe, cfg.freeze, cfg.freeze_backbone)  # a bad name fails here
    img_size = _input_size(cfg, probe, say, resume, out)
    # Resuming reloads every weight from last.safetensors: the source is not needed.
    source = _init_source(cfg, in_chans) if cfg.init_from and not resume else None
    train_loader, val_loader, classes = build_loaders(
        cfg.data, img_size=img_size, in_chans=in_chans, batch_size=cfg.batch_size,
        workers=cfg.workers, augment=cfg.augment, val_split=cfg.val_split, seed=cfg.seed,
        limit=cfg.limit, strict=cfg.strict,
    )  # fmt: skip
    model = _prepared_model(cfg, classes, in_chans, source, say, device)
    if cfg.reuse_memory:
        reuse_freed_memory()
    optimizer = build_optimizer(model, cfg.optimizer, cfg.learning_rate, cfg.decay)
    steps = len(train_loader)
    schedule = LRSchedule(cfg.schedule, steps * cfg.epochs, round(cfg.warmup_epochs * steps))
    return _Run(
        cfg=cfg, out=out, say=say, writes=writes, device=device, world=world, model=model,
        dtype=autocast_dtype(cfg.precision, device),
        small_map_grads=small_map_grads_wanted(cfg.small_map_grads, device) and not cfg.compile,
        net=compiled(model) if cfg.compile else model, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        train_loader=train_loader, val_loader=val_loader,
        meta=_run_meta(cfg, model, classes, in_chans, train_loader), img_size=img_size,
        in_chans=in_chans, skipped=skipped_files(train_loader) + skipped_files(val_loader),
        schedule=schedule,
    )  # fmt: skip


def _prepared_model(
    cfg: TrainConfig, classes: list[str], in_chans: int, source: Any,
    say: Callable[[str], None], device: torch.device,
) -> nn.Module:  # fmt: skip
    """The model built (or initialised), frozen where asked, on ``device``."""
    model = _build_model(cfg, classes, in_chans, source, say)
    frozen = freeze(model, cfg.freeze, cfg.freeze_backbone)
    if frozen:
        total = sum(1 for _ in model.parameters())
        say(f"frozen: {len(frozen)} of {total} parameter tensors (training the other "
            f"{total - len(frozen)})")  # fmt: skip
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _run_meta(
    cfg: TrainConfig, model: nn.Module, classes: list[str], in_chans: int, loader: Any
) -> dict[str, Any]:
    """What every checkpoint's metadata holds: model, classes, channels, preprocessing."""
    pre = loader.dataset
    while hasattr(pre, "dataset"):
        pre = pre.dataset
    meta = {"model": cfg.model, "num_classes": len(classes), "in_chans": in_chans,
            "class_names": classes, "preprocess": pre.pre.as_dict()}  # fmt: skip
    if model.model_kwargs:
        meta["model_kwargs"] = model.model_kwargs
    if cfg.init_from:
        meta["init_from"] = cfg.init_from
    return meta


def _resume(run: _Run, state: dict[str, Any]) -> None:
    """Phase 3: weights, optimizer, schedule, counters and RNG states of the last epoch. A
    state that does not fit this run's optimizer is one error, before any epoch."""
    load_weights(run.model, run.last_w, strict_aux=True)
    fresh = dict(run.schedule.__dict__)  # LambdaLR restores the saved schedule's fields
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        _check_optimizer_state(run.optimizer)
        run.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise CnnlabError(
            f"{str(run.last_s)!r} does not fit this run ({' '.join(str(exc).split())[:160]})"
        ) from None
    run.schedule.__dict__.update(fresh)
    run.start_epoch = run.saved_epoch = state["epoch"]
    run.step, run.history, run.best = state["step"], state["history"], state["best_top1"]
    run.say(f"resuming {run.cfg.model} from {str(run.last_w)!r} after epoch {run.start_epoch}")
    done = state["config"].get("epochs", run.cfg.epochs)
    if run.cfg.epochs != done and run.start_epoch < run.cfg.epochs:
        for group, base in zip(run.optimizer.param_groups, run.scheduler.base_lrs, strict=True):
            group["lr"] = base * run.schedule(run.scheduler.last_epoch)
        run.say(
            f"extending the run from {done} to {run.cfg.epochs} epochs: the {run.cfg.schedule} "
            f"schedule now spans {run.cfg.epochs} epochs, so the learning rate continues at "
            f"{run.optimizer.param_groups[0]['lr']:.3g}"
        )


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every per-parameter tensor of a loaded optimizer state has its parameter's shape."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise ValueError(
                        f"optimizer {key} of shape {tuple(value.shape)} for a parameter of "
                        f"shape {tuple(p.shape)}"
                    )


def _epoch(run: _Run, epoch: int, progress: bool) -> tuple[dict[str, Any], float]:
    """Phase 4: one epoch of training and a validation pass; (the metrics row, val top-1)."""
    cfg, steps = run.cfg, len(run.train_loader)
    run.train_loader.sampler.set_epoch(epoch)
    total = steps * run.train_loader.batch_size
    bar = _progress(progress and run.writes and _tty(), epoch, cfg.epochs, total)
    t0 = time.perf_counter()
    try:
        stats = run_epoch(
            run.net, run.train_loader, run.optimizer, device=run.device,
            scheduler=run.scheduler, clip_grad_norm=cfg.clip_grad_norm,
            aux_weight=cfg.aux_weight, loss_fn=run.loss_fn,
            on_batch=bar.update if bar else None, dtype=run.dtype,
            small_map_grads=run.small_map_grads,
        )  # fmt: skip
    except NonFiniteLossError as exc:
        raise CnnlabError(
            f"loss is {exc.value} at step {run.step + exc.batch + 1} (epoch {epoch + 1}, "
            f"batch {exc.batch + 1}); stopped; {_last_good(run)}"
        ) from None
    finally:
        if bar:
            bar.close()
    seconds = time.perf_counter() - t0
    run.train_time += seconds
    run.train_images += stats["images"]
    run.step += steps
    val = evaluate(run.net, run.val_loader, device=run.device, dtype=run.dtype)
    if not math.isfinite(val["loss"]):  # the last steps diverged: keep the last good files
        raise CnnlabError(
            f"validation loss is {val['loss']} after epoch {epoch + 1} (the weights diverged); "
            f"stopped; {_last_good(run)}"
        )
    row = {
        "epoch": epoch + 1,
        "step": run.step,
        "train_loss": round(stats["loss"], 6),
        "train_top1": round(stats["top1"], 6),
        "val_loss": round(val["loss"], 6),
        "val_top1": round(val["top1"], 6),
        "val_top5": round(val["top5"], 6),
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_seconds": round(seconds, 3),
        "images_per_second": round(stats["images"] / seconds, 1),
    }
    run.history.append(row)
    return row, val["top1"]


def _last_good(run: _Run) -> str:
    """Where a run stopped by a NaN stands on disk, for its error message."""
    if not run.history:
        return "no checkpoint was written"
    return f"the last good checkpoint is {str(run.last_w)!r} (epoch {len(run.history)})"


def _checkpoint(run: _Run, row: dict[str, Any], top1: float, writer: Any) -> None:
    """Phase 5 (rank 0): best weights and metrics.csv (both rewritten identically if the
    epoch is redone), then last.* as one unit (the commit), then TensorBoard. A full disk or
    any other write error is one error line naming the last complete checkpoint."""
    epoch = row["epoch"]
    meta_now = {**run.meta, "epoch": epoch, "step": run.step}
    best = max(run.best, top1)
    try:
        if top1 > run.best:
            save_weights(run.model, run.out / "best.safetensors", {**meta_now, "val_top1": top1},
                         drop_aux=True)  # fmt: skip
        write_metrics_csv(run.out / "metrics.csv", run.history)
        commit_checkpoint(
            run.out, run.step, lambda path: save_weights(run.model, path, meta_now),
            _state(run, epoch, best),
        )  # fmt: skip
        run.best, run.saved_epoch = best, epoch
        recover_checkpoint(run.out)  # the renames to last.*
        if writer is not None:
            for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
                writer.add_scalar(key.replace("_", "/", 1), row[key], epoch)
            writer.flush()
    except OSError as exc:
        raise CnnlabError(
            f"cannot write the checkpoint of epoch {epoch} in {str(run.out)!r}: "
            f"{exc.strerror or exc}; {_kept(run)}"
        ) from None


def _state(run: _Run, epoch: int, best: float) -> dict[str, Any]:
    return {
        "config": asdict(run.cfg),
        "epoch": epoch,
        "step": run.step,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rng_state(),
        "history": run.history,
        "best_top1": best,
    }


def _kept(run: _Run) -> str:
    """Where the run stands on disk, for an error or interrupt message."""
    if not run.saved_epoch:
        return "no checkpoint was written; a new run starts afresh in this --out"
    return (
        f"the last complete checkpoint is {str(run.last_w)!r} (epoch {run.saved_epoch}); "
        "--resume continues from it"
    )


def _say_epoch(run: _Run, row: dict[str, Any]) -> None:
    run.say(
        f"epoch {row['epoch']}/{run.cfg.epochs}  train loss {row['train_loss']:.4f} "
        f"top-1 {row['train_top1']:.2%}  val loss {row['val_loss']:.4f} "
        f"top-1 {row['val_top1']:.2%} top-5 {row['val_top5']:.2%}  "
        f"lr {row['lr']:.3g}  {row['train_seconds']:.1f}s ({row['images_per_second']:,.0f} img/s)"
    )


def _on_interrupt(run: _Run) -> None:
    """Ctrl-C: save the weights of the moment; --resume restarts the epoch that was cut."""
    run.interrupted = True
    saved = "interrupted: "
    if run.writes:
        step, what = save_interrupted(
            run.out, lambda path: save_weights(run.model, path, {**run.meta, "step": -1})
        )
        _keep_committed(run, step)
        saved += what + "; "
    run.say(saved + _kept(run))


def _keep_committed(run: _Run, step: int | None) -> None:
    """After a Ctrl-C, the history, best top-1 and saved epoch of the folder's committed
    checkpoint (of ``step``; None: unreadable, then what this process committed): the cut may
    have come before the commit of the last epoch (its row is dropped) or after it but
    before ``run.best`` was set."""
    if step is None:
        run.history = run.history[: run.saved_epoch]
    else:
        run.history = [r for r in run.history if r["step"] <= step]
    run.saved_epoch = run.history[-1]["epoch"] if run.history else 0
    run.best = max([run.best, *(r.get("val_top1", -1.0) for r in run.history)])


def _report(run: _Run) -> dict[str, Any]:
    """Phase 6: the summary ``fit`` returns."""
    if run.skipped:
        run.say(f"skipped {len(run.skipped)} corrupt image(s): {', '.join(run.skipped[:5])}")
    last = run.history[-1] if run.history else {}
    return {
        "model": run.cfg.model,
        "data": run.cfg.data,
        "epochs": len(run.history),
        "interrupted": run.interrupted,
        "val_top1": last.get("val_top1"),
        "val_top5": last.get("val_top5"),
        "val_loss": last.get("val_loss"),
        "best_top1": run.best if run.best >= 0 else None,
        "train_seconds": round(run.train_time, 2),
        "images_per_second": (
            round(run.train_images / run.train_time, 1) if run.train_time else None
        ),
        "skipped_images": run.skipped,
        "out": str(run.out),
        "weights": str(run.out / "best.safetensors"),
        "world_size": run.world,
        "device": str(run.device),
        "history": run.history,
    }


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

    With ``cfg.init_from`` the model starts from those weights (any file :func:`cnnlab.load`
    reads), its classifier new where the data's classes differ; ``cfg.freeze_backbone`` /
    ``cfg.freeze`` freeze part of it (:mod:`cnnlab.train.finetune`). A NaN or infinite loss
    raises ``CnnlabError`` naming the step (``last.*`` keep the last good epoch). Ctrl-C
    writes ``interrupted.safetensors`` and returns with ``summary["interrupted"] = True``;
    ``resume=True`` continues from ``last.*``. Nothing is written before every option and
    the ``init_from`` file have been checked.
    """
    device, rank, world = _setup_distributed(cfg.device)
    try:
        summary = _fit(cfg, Path(out), resume, log if rank == 0 else None, progress,
                       tensorboard, device, world, rank == 0)  # fmt: skip
        if world > 1:
            dist.barrier()  # leave together: a rank that tore gloo down while its peer ran aborted
        return summary
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _fit(
    cfg: TrainConfig, out: Path, resume: bool, log: Callable[[str], None] | None,
    progress: bool, tensorboard: bool, device: torch.device, world: int, writes: bool,
) -> dict[str, Any]:  # fmt: skip
    """Lock the folder (if it exists), open, set up, resume; create and lock a new folder only
    then; train; report. The lock is held until the end."""
    say = log or (lambda _msg: None)
    _check_out(out)
    lock = _claim(out) if writes and out.is_dir() else None
    try:
        if world > 1:
            dist.barrier()  # rank 0 has finished any interrupted commit
        state = _open_state(cfg, out, resume, writes)
        if state is not None and cfg.batch_size is None:  # resume with the run's batch
            cfg = replace(cfg, batch_size=state["config"].get("batch_size", 128))
        run = _setup(cfg, out, state is not None, say, writes, device, world)
        if state is not None:
            _resume(run, state)
        if writes and lock is None:  # a new folder, created once everything is checked
            out.mkdir(parents=True, exist_ok=True)
            lock = _claim(out)
            _open_state(cfg, out, False, writes)  # nobody started a run there meanwhile
        if run.start_epoch >= cfg.epochs:
            say(f"the run in {str(out)!r} has already finished its {cfg.epochs} epochs; "
                "nothing to do (--resume --epochs N with a larger N extends it)")  # fmt: skip
            return _report(run)
        return _train(run, progress, tensorboard)
    finally:
        if lock is not None:
            lock.release()


def _check_out(out: Path) -> None:
    """``out`` is a folder or can become one: not a file, not below a file."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == out else f"is below the file {str(path)!r}"
                raise CnnlabError(f"--out {str(out)!r} {what}; a run needs a folder")
            return


def _claim(out: Path) -> RunLock:
    """The run's lock, then the folder tidied: an interrupted commit finished, what killed
    writes left removed."""
    lock = RunLock(out)
    remove_stale_files(out)
    return lock


def _train(run: _Run, progress: bool, tensorboard: bool) -> dict[str, Any]:
    """Phase 4-5 for every remaining epoch; Ctrl-C ends the loop cleanly."""
    cfg, out, world, device = run.cfg, run.out, run.world, run.device
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
        run.net = compiled(ddp) if cfg.compile else ddp
    writer = None
    if run.writes and tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=run.start_epoch + 1)
    run.say(
        f"training {cfg.model} on {cfg.data}: {len(run.train_loader.dataset):,} train / "
        f"{len(run.val_loader.dataset):,} val images at {run.img_size}x{run.img_size}x"
        f"{run.in_chans}, {cfg.epochs} epochs of {len(run.train_loader)} steps, {world} "
        f"process(es) on {device.type}"
    )
    _note_few_steps(run)
    try:
        for epoch in range(run.start_epoch, cfg.epochs):
            row, top1 = _epoch(run, epoch, progress)
            if run.writes:
                _checkpoint(run, row, top1, writer)
            _say_epoch(run, row)
    except KeyboardInterrupt:
        _on_interrupt(run)
    except RuntimeError as exc:
        if not str(exc).startswith("DataLoader worker"):  # killed, e.g. by the OOM killer
            raise
        what = " ".join(str(exc).split()).rstrip(".")
        raise CnnlabError(
            f"{what} (out of memory? fewer --workers need less); {_kept(run)}"
        ) from None
    finally:
        if writer is not None:
            writer.close()
    return _report(run)


def _note_few_steps(run: _Run) -> None:
    """A run of fewer than MIN_STEPS optimizer steps may barely move (few epochs, or a large
    --batch-size on small data): say so, with a batch size that gives about STEPS_TARGET."""
    cfg, steps = run.cfg, len(run.train_loader)
    total, used = steps * cfg.epochs, run.train_loader.batch_size * run.world
    images = len(run.train_loader.dataset)
    batch = 2 ** max(3, int(math.log2(max(1, images * cfg.epochs // STEPS_TARGET))))
    if total >= MIN_STEPS or batch >= used:
        return
    more = max(1, images // batch) * cfg.epochs  # the loader drops a last partial batch
    run.say(f"note: only {total} optimizer steps in the whole run ({images:,} images, batch "
            f"{used}, {cfg.epochs} epochs): training may barely move; --batch-size "
            f"{batch} gives {more} (see docs/training.md, small data)")  # fmt: skip


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


def _tty() -> bool:
    """A progress bar only on a terminal: elsewhere the line per epoch is the progress."""
    return bool(getattr(sys.stderr, "isatty", None)) and sys.stderr.isatty()


def _progress(on: bool, epoch: int, epochs: int, total: int) -> _Bar | None:
    return _Bar(epoch, epochs, total) if on else None


CONFIG_FIELDS = [f.name for f in fields(TrainConfig)]
