"""A run's checkpoints: weights through :mod:`cnnlab.saved`, training state here.

A run folder holds

* ``last.safetensors`` + ``last.state.pt``: the model (auxiliary heads included) and the
  training state (optimizer, scheduler, epoch, step, RNG states, config, history, all plain
  data) at the end of the last completed epoch; what ``--resume`` continues from;
* ``last.json``: the manifest of that pair (its step; the commit point, below);
* ``best.safetensors``: the inference model (auxiliary heads dropped) of the epoch with the
  best validation top-1;
* ``interrupted.safetensors``: the weights at the moment of a Ctrl-C;
* ``.lock``: the run's lock (:class:`RunLock`).

The pair ``last.*`` is one atomic unit (:func:`commit_checkpoint`): both files are first
written in full under step-specific hidden names (``.last-STEP.safetensors``,
``.last-STEP.state.pt``), then ``last.json`` naming them is written atomically: that rename
is the commit. Only then are the two renamed to ``last.*``. A kill before the commit leaves
the previous pair as it was (the hidden files are removed by the next run); a kill after it
is finished by :func:`recover_checkpoint`, which renames whichever of the two is still
pending. So at every instant the folder holds one complete pair from one step.

Every single file is written atomically (temp file, fsync, ``os.replace``). Nothing read
from a file is ever executed: safetensors holds only tensors and ``weights_only=True``
refuses any pickled code; :func:`load_state` also checks the state's structure.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import random
import re
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.codec import read_file_bytes
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_bytes
from cnnlab.saved import torch_load_weights_only

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LAST_STATE",
    "LAST_WEIGHTS",
    "MANIFEST",
    "RunLock",
    "commit_checkpoint",
    "committed_step",
    "load_state",
    "recover_checkpoint",
    "remove_stale_files",
    "rng_state",
    "save_interrupted",
    "save_state",
    "set_rng_state",
    "write_metrics_csv",
]

STATE_FORMAT = "cnnlab.train-state/1"
MANIFEST_FORMAT = "cnnlab.checkpoint/1"
LAST_WEIGHTS, LAST_STATE = "last.safetensors", "last.state.pt"  # what --resume reads
MANIFEST, LOCK = "last.json", ".lock"
MAX_MANIFEST_BYTES = 4096
# What a killed write leaves: atomic_path's ``.NAME.XXXX.tmp`` of the files a run writes, and
# uncommitted pairs; nothing else (``--out .`` must not cost a user's own temp files).
_PENDING = r"\.last-\d+\.(?:safetensors|state\.pt)"
_OURS = (
    rf"(?:(?:last|best|interrupted)\.safetensors|last\.state\.pt|last\.json|metrics\.csv"
    rf"|{_PENDING})"
)
_STALE = re.compile(rf"\.{_OURS}\.\w+\.tmp|{_PENDING}")


def save_state(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the training state atomically (tensors and plain Python data only)."""
    buf = io.BytesIO()  # serialised first: a full disk is then a plain OSError
    torch.save({"format": STATE_FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``: pickled code is refused, not run;
    a state that loads but lacks a field or holds the wrong kind of value is refused too."""
    p = Path(path)
    if not p.is_file():
        raise CnnlabError(f"training state {str(p)!r} does not exist")
    state = torch_load_weights_only(p, "cnnlab training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CnnlabError(f"{str(p)!r} is not a cnnlab training state")
    problem = _state_problem(state)
    if problem:
        raise CnnlabError(f"{str(p)!r} is not a usable cnnlab training state: {problem}")
    return state


def _is_int(x: Any, low: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _state_problem(s: dict[str, Any]) -> str:
    """What is wrong with the structure of a loaded state, or ''."""
    checks = [
        (isinstance(s.get("config"), dict), "config is not a dict"),
        (_is_int(s.get("epoch"), 1), "epoch is not an integer >= 1"),
        (_is_int(s.get("step")), "step is not an integer >= 0"),
        (isinstance(s.get("optimizer"), dict)
         and isinstance(s["optimizer"].get("state"), dict)
         and isinstance(s["optimizer"].get("param_groups"), list), "bad optimizer state"),
        (isinstance(s.get("scheduler"), dict), "bad scheduler state"),
        (_rng_ok(s.get("rng")), "bad RNG states"),
        (isinstance(s.get("history"), list)
         and all(isinstance(r, dict) and _is_int(r.get("epoch"), 1) and _is_int(r.get("step"))
                 for r in s["history"]),
         "bad history"),
        (isinstance(s.get("best_top1"), int | float)
         and math.isfinite(s["best_top1"]), "best_top1 is not a number"),
    ]  # fmt: skip
    for ok, problem in checks:
        if not ok:
            return problem
    if len(s["history"]) != s["epoch"]:
        return f"history has {len(s['history'])} rows for {s['epoch']} epochs"
    return ""


def _rng_ok(rng: Any) -> bool:
    if not isinstance(rng, dict):
        return False
    t, n, py = rng.get("torch"), rng.get("numpy"), rng.get("python")
    return (
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.ndim == 1
        and isinstance(rng.get("cuda"), list)
        and isinstance(n, list | tuple) and len(n) == 5 and isinstance(n[1], torch.Tensor)
        and n[1].shape == (624,)
        and isinstance(py, list | tuple) and len(py) == 3
    )  # fmt: skip


def _pending(step: int) -> tuple[str, str]:
    return f".last-{step}.safetensors", f".last-{step}.state.pt"


def commit_checkpoint(
    out: Path, step: int, write_weights: Callable[[Path], None], state: dict[str, Any]
) -> None:
    """Commit ``last.*`` for ``step`` as one unit: both files in full under hidden names, then
    the manifest naming them (the commit). :func:`recover_checkpoint` then renames them to
    ``last.*`` (call it next; the next run does it if a kill comes first). An exception
    before the commit removes the hidden files and leaves the previous pair."""
    weights, state_name = _pending(step)
    try:
        write_weights(out / weights)
        save_state(state, out / state_name)
        manifest = {"format": MANIFEST_FORMAT, "step": step, "weights": weights,
                    "state": state_name}  # fmt: skip
        atomic_write_bytes(out / MANIFEST, json.dumps(manifest).encode())
    except BaseException:
        if committed_step(out) != step:  # cut after the manifest's rename: it is committed
            for name in (weights, state_name):
                with contextlib.suppress(OSError):
                    (out / name).unlink(missing_ok=True)
        raise


def committed_step(out: Path) -> int | None:
    """The step of the folder's committed checkpoint (its manifest), or None."""
    with contextlib.suppress(CnnlabError, OSError):
        manifest = _read_manifest(out)
        return None if manifest is None else manifest["step"]
    return None


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:  # a link to a huge file is not read in full
        manifest = json.loads(read_file_bytes(path, MAX_MANIFEST_BYTES, "manifest"))
    except (ValueError, UnicodeDecodeError):
        manifest = None
    pending = set(_pending(manifest.get("step", -1))) if isinstance(manifest, dict) else set()
    if (not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT
            or not _is_int(manifest.get("step"))
            or {manifest.get("weights"), manifest.get("state")} != pending):  # fmt: skip
        raise CnnlabError(f"{str(path)!r} is not a cnnlab checkpoint manifest")
    return manifest


def recover_checkpoint(out: Path) -> int | None:
    """Finish a committed checkpoint whose renames a kill cut short; return the step of the
    folder's ``last.*`` pair according to its manifest (None without one)."""
    manifest = _read_manifest(out)
    if manifest is None:
        return None
    for src, dst in ((manifest["weights"], LAST_WEIGHTS), (manifest["state"], LAST_STATE)):
        if (out / src).is_file():
            os.replace(out / src, out / dst)
    _fsync_folder(out)
    return manifest["step"]


def save_interrupted(out: Path, save: Callable[[Path], Any]) -> tuple[int | None, str]:
    """Ctrl-C in a run: finish a commit it cut short, then write the weights of the moment to
    ``out/interrupted.safetensors`` with ``save(path)``. Returns the step of the folder's last
    complete checkpoint (None without one) and what was saved, for the message."""
    path, step = out / "interrupted.safetensors", None
    try:
        step = recover_checkpoint(out)
        save(path)
    except OSError as exc:
        return step, f"could not save the weights of the moment ({exc.strerror or exc})"
    return step, f"weights saved to {str(path)!r}"


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # make the renames durable where the OS allows
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_files(out: Path) -> list[str]:
    """Finish a committed checkpoint (:func:`recover_checkpoint`), then remove what killed
    writes left in ``out`` (temp files, uncommitted pairs); call it holding the run's lock.
    Returns the names removed."""
    recover_checkpoint(out)
    removed = []
    for path in sorted(out.iterdir()):
        if _STALE.fullmatch(path.name) and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


_HELD_LOCKS: set[int] = set()  # the descriptors of this process's RunLocks


def _close_locks_in_child() -> None:
    """A forked child (a DataLoader worker) shares the lock's open file: closing its copy
    keeps it from holding the lock after its parent is killed (the parent's copy holds it)."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


class RunLock:
    """An exclusive ``fcntl.flock`` on ``FOLDER/.lock``, which holds "pid host" of its owner.
    The OS drops it when the process ends (a kill included), so it never goes stale; a lock
    file left by a dead process is simply taken over. Forked children do not keep it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self.fd: int | None = None
        if fcntl is None:  # pragma: no cover
            return
        fd = _open_lock(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            who = f"pid {holder[0]} on {holder[1]}" if len(holder) == 2 else "another process"
            raise CnnlabError(
                f"{str(folder)!r} is in use by another training ({who}); wait for it to end "
                "or pass another --out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the error names the lock file
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self.fd = fd
        _HELD_LOCKS.add(fd)

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a new owner)."""
        if self.fd is not None:
            _HELD_LOCKS.discard(self.fd)
            os.close(self.fd)
            self.fd = None


def _open_lock(path: Path) -> int:
    """``path`` opened for writing, created if missing; a symbolic link (a run folder from
    elsewhere: its target would be overwritten), a FIFO or a device is refused."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    refused = CnnlabError(f"{str(path)!r} is not a regular file; a run's lock must be one "
                          "(remove it)")  # fmt: skip
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise refused from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refused
    return fd


def rng_state() -> dict[str, Any]:
    """Every random-number state (torch, CUDA, NumPy, Python) as tensors and plain data, the
    form :func:`load_state` checks and ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(_tuples(state["python"]))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.csv``, one row per epoch, written atomically."""
    buf = io.StringIO()
    if history:  # the newest row's columns (a resumed state's older rows may lack some)
        writer = csv.DictWriter(buf, fieldnames=list(history[-1]), restval="",
                                extrasaction="ignore")  # fmt: skip
        writer.writeheader()
        writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())
