"""A detector training run, as ``cnnlab train DETECTOR --data DIR`` does it: the loop of
:mod:`cnnlab.detect.train` with a classifier run's folder (:mod:`cnnlab.train.checkpoint`).

``DIR/run`` holds ``last.safetensors`` + ``last.state.pt`` (committed as one unit with
``last.json`` at the end of every epoch: a kill at any instant leaves the previous complete
pair), ``best.safetensors`` (the epoch with the lowest validation loss), ``metrics.csv``, and
``.lock`` while the run writes. Every weights file is a cnnlab file that ``cnnlab.load``
reads: ``model_kwargs`` holds the ``image_size``, ``class_names`` the categories in label
order, ``category_ids`` their COCO ids, ``preprocess`` the size and normalisation.

Resume (``resume=True``) continues after the last committed epoch with the weights, optimizer,
schedule and RNG states it saved; the settings must be the run's (``epochs`` may grow). Each
epoch's data order is drawn from (seed, epoch) and the augmentation from torch's RNG, so on
the CPU a resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data import FASHION_MNIST_STATS, IMAGENET_STATS
from cnnlab.detect.train import (
    DetectionConfig,
    _optimizer,
    _train_epoch,
    detection_loaders,
    evaluate_loss,
    init_backbone,
    prepare,
)
from cnnlab.errors import CnnlabError
from cnnlab.registry import build_model, build_on_meta, model_info
from cnnlab.saved import load, read_meta, save_weights
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

__all__ = ["RunSetup", "is_detector", "train_detector"]

# Settings that may change on --resume: they change how fast a step runs, not what it learns.
RESUME_FREE = {"epochs", "channels_last", "precision", "reuse_memory", "small_map_grads"}


def is_detector(name: str) -> bool:
    """Whether the registered model ``name`` is a detector (``task="detection"``)."""
    return model_info(name).get("task") == "detection"


@dataclass(frozen=True)
class RunSetup:
    """What a run builds its model from, beside :class:`DetectionConfig`: ``in_chans``
    (default: the ``init_from`` classifier's, else 3), ``image_size`` (default: the model's),
    ``init_from`` (a saved classifier for the backbone, :func:`init_backbone`), ``strict``
    (a bad annotation or image is an error, not skipped), ``model_kwargs`` (the model's own)."""

    in_chans: int | None = None
    image_size: int | None = None
    init_from: str | None = None
    strict: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """What one run's phases share."""

    name: str
    out: Path
    config: DetectionConfig
    setup: RunSetup
    model: nn.Module
    train: Any
    val: Any
    opt: Any
    sched: Any
    meta: dict[str, Any]
    say: Callable[[str], None]
    dtype: torch.dtype | None = None  # autocast (config.precision); None: fp32
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    best: float = float("inf")


def _saved_setup(out: Path, config: DetectionConfig, setup: RunSetup) -> tuple[dict, RunSetup]:
    """``--resume``: the saved state, and ``setup`` completed from it (what the user left
    out is the run's own); any other change of setting is one error."""
    state = load_state(out / LAST_STATE)
    saved = state["config"]
    if read_meta(out / LAST_WEIGHTS).get("step") != state["step"] or "setup" not in saved:
        raise CnnlabError(f"{str(out)!r} does not hold a resumable detector run")
    given = {k: v for k, v in asdict(setup).items() if v not in (None, {}, False)}
    merged = RunSetup(**{**saved["setup"], **given})
    config = _with_saved_stats(config, saved)
    now = {**asdict(config), "setup": asdict(merged)}
    diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items()
            if k not in RESUME_FREE and _plain(saved.get(k)) != _plain(v)]  # fmt: skip
    if diff:
        raise CnnlabError("--resume needs the settings of the run; changed: " + ", ".join(diff))
    if config.epochs < state["epoch"]:
        raise CnnlabError(f"--resume: the run has done {state['epoch']} epochs already; "
                          f"--epochs {config.epochs} is fewer")  # fmt: skip
    return state, merged


def _with_saved_stats(config: DetectionConfig, saved: dict[str, Any]) -> DetectionConfig:
    """``config`` with the run's normalisation (resolved when it began)."""
    return replace(config, mean=tuple(saved["mean"]), std=tuple(saved["std"]))


def _plain(value: Any) -> Any:
    """Tuples as lists (a saved state holds lists where the config holds tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _resolve(config: DetectionConfig, setup: RunSetup) -> tuple[DetectionConfig, RunSetup]:
    """A new run's channels and normalisation: the ``init_from`` classifier's (its backbone
    expects them), else 3 channels and ImageNet's statistics (Fashion-MNIST's for grey)."""
    source = _source_meta(setup.init_from) if setup.init_from else None
    in_chans = setup.in_chans or (source["in_chans"] if source else 3)
    if source is not None:
        mean, std = source["preprocess"]["mean"], source["preprocess"]["std"]
    else:
        mean, std = FASHION_MNIST_STATS if in_chans == 1 else IMAGENET_STATS
    config = replace(config, mean=tuple(mean), std=tuple(std))
    return config, replace(setup, in_chans=in_chans)


def _build(
    name: str, root: str, out: Path, config: DetectionConfig, setup: RunSetup, fresh: bool,
    say: Callable[[str], None],
) -> _Run:  # fmt: skip
    """The model built (a fresh run's backbone from ``init_from``), the data read."""
    # bad keywords or image size: one error before any work
    probe = build_on_meta(name, 1, setup.in_chans, **_kwargs(setup))
    train, val = detection_loaders(probe, root, config, strict=setup.strict)
    classes = train.dataset.classes
    if val.dataset.classes != classes:
        raise CnnlabError(f"{root!r}: the train and val annotation files name other categories")
    model = build_model(name, len(classes), setup.in_chans, **_kwargs(setup))
    if fresh and setup.init_from:
        got = init_backbone(model, setup.init_from)
        say(f"backbone initialised from {got['path']!r} ({got['model']})")
    dtype = prepare(model, config)
    opt, sched = _optimizer(model, config, config.epochs * len(train))
    meta = {"model": name, "num_classes": len(classes), "in_chans": setup.in_chans,
            "class_names": classes, "category_ids": train.dataset.category_ids,
            "preprocess": train.dataset.pre.as_dict(), "task": "detection"}  # fmt: skip
    if model.model_kwargs:
        meta["model_kwargs"] = model.model_kwargs
    return _Run(name, out, config, setup, model, train, val, opt, sched, meta, say, dtype)


def _source_meta(source: str) -> dict[str, Any]:
    """The metadata of the saved model ``source`` (any file or run folder ``cnnlab.load``
    takes), read by loading it once (a bad file is one ``CnnlabError``)."""
    return load(source)[1]


def _kwargs(setup: RunSetup) -> dict[str, Any]:
    extra = {"image_size": setup.image_size} if setup.image_size else {}
    return {**setup.model_kwargs, **extra}


def _resume(run: _Run, state: dict[str, Any]) -> None:
    """Weights, optimizer, schedule, counters and RNG states of the last committed epoch."""
    load(run.out / LAST_WEIGHTS, run.model)  # into the built model, key by key
    try:
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise CnnlabError(f"{str(run.out / LAST_STATE)!r} does not fit this run "
                          f"({' '.join(str(exc).split())[:160]})") from None  # fmt: skip
    run.sched.T_max = max(run.config.epochs * len(run.train), 1)  # --epochs may have grown
    run.history, run.step = state["history"], state["step"]
    run.best = state.get("best_val_loss", float("inf"))
    run.say(f"resuming {run.name} from {str(run.out / LAST_WEIGHTS)!r} after epoch "
            f"{state['epoch']}")  # fmt: skip


def _epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One epoch (its data order drawn from seed and epoch) and the validation loss."""
    run.train.generator.manual_seed(run.config.seed * 100_003 + epoch)
    t0 = time.perf_counter()
    parts = _train_epoch(run.model, run.train, run.opt, run.sched, run.step, run.dtype,
                         run.config.small_map_grads)  # fmt: skip
    seconds = time.perf_counter() - t0
    run.step += len(run.train)
    val = evaluate_loss(run.model, run.val, run.dtype)
    if not math.isfinite(val["loss"]):  # the last steps diverged: keep the last good files
        kept = f"the last good checkpoint is epoch {epoch - 1}" if epoch > 1 else "nothing saved"
        raise CnnlabError(
            f"validation loss is {val['loss']} after epoch {epoch} (the weights diverged); "
            f"stopped; {kept}"
        )
    row = {"epoch": epoch, "step": run.step,
           **{f"train_{k}": round(v, 6) for k, v in parts.items()},
           **{f"val_{k}": round(v, 6) for k, v in val.items()},
           "lr": run.opt.param_groups[0]["lr"], "train_seconds": round(seconds, 3)}  # fmt: skip
    run.history.append(row)
    return row


def _checkpoint(run: _Run, row: dict[str, Any]) -> None:
    """best.safetensors (a lower val loss), metrics.csv, then last.* as one unit."""
    meta = {**run.meta, "epoch": row["epoch"], "step": run.step}
    best = min(run.best, row["val_loss"])
    state = {"config": {**asdict(run.config), "setup": asdict(run.setup)},
             "epoch": row["epoch"], "step": run.step, "optimizer": run.opt.state_dict(),
             "scheduler": run.sched.state_dict(), "rng": rng_state(), "history": run.history,
             "best_top1": 0.0,  # the classifier state's field; a detector keeps best_val_loss
             "best_val_loss": best}  # fmt: skip
    try:
        if row["val_loss"] < run.best:
            save_weights(run.model, run.out / "best.safetensors", {**meta, "val_loss": best})
        write_metrics_csv(run.out / "metrics.csv", run.history)
        commit_checkpoint(run.out, run.step, lambda p: save_weights(run.model, p, meta), state)
        recover_checkpoint(run.out)
    except OSError as exc:
        raise CnnlabError(f"cannot write the checkpoint of epoch {row['epoch']} in "
                          f"{str(run.out)!r}: {exc.strerror or exc}") from None  # fmt: skip
    run.best = best


def train_detector(
    name: str,
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: DetectionConfig,
    setup: RunSetup | None = None,
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train the detector ``name`` on the COCO-style folder ``root`` into the run folder
    ``out`` (module doc); return a summary (epochs, last row, best val loss, paths). Every
    option, the data and the ``init_from`` file are checked before the folder is created."""
    if not is_detector(name):
        raise CnnlabError(f"{name} is not a detector; COCO-style data needs one "
                          "(`cnnlab models --task detection`)")  # fmt: skip
    say, out, setup = log or (lambda _m: None), Path(out), setup or RunSetup()
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"--out {str(out)!r} is a file; a run needs a folder")
    lock = _claim(out) if out.is_dir() else None
    try:
        state = _open(out, config, setup, resume)
        if state is None:
            config, setup = _resolve(config, setup)
        else:
            setup = RunSetup(**state.pop("_setup"))
            config = _with_saved_stats(config, state["config"])
        torch.manual_seed(config.seed)
        run = _build(name, os.fspath(root), out, config, setup, state is None, say)
        if state is not None:
            _resume(run, state)
        if lock is None:
            out.mkdir(parents=True, exist_ok=True)
            lock = _claim(out)
        return _train(run)
    finally:
        if lock is not None:
            lock.release()


def _claim(out: Path) -> RunLock:
    lock = RunLock(out)
    remove_stale_files(out)
    return lock


def _open(out: Path, config: DetectionConfig, setup: RunSetup, resume: bool) -> dict | None:
    """The state to resume (with the completed setup under ``_setup``), or None."""
    if not resume:
        if (out / LAST_STATE).exists() or (out / MANIFEST).exists():
            raise CnnlabError(f"{str(out)!r} already holds a run; pass --resume to continue "
                              "it or another --out")  # fmt: skip
        return None
    if not (out / LAST_STATE).is_file():
        raise CnnlabError(f"nothing to resume: {str(out / LAST_STATE)!r} does not exist")
    state, merged = _saved_setup(out, config, setup)
    return {**state, "_setup": asdict(merged)}


def _train(run: _Run) -> dict[str, Any]:
    """Every remaining epoch, each checkpointed; the summary."""
    done = len(run.history)
    run.say(f"training {run.name} on {len(run.train.dataset):,} train / "
            f"{len(run.val.dataset):,} val images at {run.model.input_size[1]}px, "
            f"{run.config.epochs} epochs of {len(run.train)} steps")  # fmt: skip
    interrupted = False
    try:
        for epoch in range(done + 1, run.config.epochs + 1):
            row = _epoch(run, epoch)
            _checkpoint(run, row)
            run.say(f"epoch {epoch}/{run.config.epochs}  train loss {row['train_loss']:.4f} "
                    f"(loc {row['train_loc']:.4f}, conf {row['train_conf']:.4f})  val loss "
                    f"{row['val_loss']:.4f}  {row['train_seconds']:.1f}s")  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
        _on_interrupt(run)
    skipped = run.train.dataset.skipped + run.val.dataset.skipped
    last = run.history[-1] if run.history else {}
    return {"model": run.name, "epochs": len(run.history), "interrupted": interrupted,
            "val_loss": last.get("val_loss"),
            "best_val_loss": None if run.best == float("inf") else run.best,
            "skipped": skipped, "out": str(run.out),
            "weights": str(run.out / "best.safetensors"), "history": run.history}  # fmt: skip


def _on_interrupt(run: _Run) -> None:
    """Ctrl-C, as in a classifier run: a commit it cut short finished, the weights of the
    moment saved to ``interrupted.safetensors``, the history cut to the committed epochs and
    the best val loss theirs (the cut may come between the commit and ``run.best``);
    ``--resume`` restarts the epoch that was cut."""
    step, saved = save_interrupted(
        run.out, lambda path: save_weights(run.model, path, {**run.meta, "step": -1})
    )
    run.history = [r for r in run.history if step is not None and r["step"] <= step]
    run.best = min([run.best, *(r.get("val_loss", run.best) for r in run.history)])
    epochs = [r["epoch"] for r in run.history if r["step"] == step]
    kept = (f"the last complete checkpoint is epoch {epochs[0]}; --resume continues from it"
            if epochs else "no epoch was completed; a new run starts afresh")  # fmt: skip
    run.say(f"interrupted: {saved}; {kept}")
