"""Training-step speed of cnnlab's options against torchvision's eager model, interleaved.

For each case (model, image size, batch 64) the contenders hold the same weights and compute
the same thing. The baseline is torchvision's model (eager, NCHW, fp32) in a process of its
own with glibc's default allocator, as a torchvision user runs it, driven from this process;
its sample is the second of two steps run back to back (``OwnProcess``). In this process,
as ``cnnlab train`` does (``--no-reuse-memory`` here to skip it), freed memory is kept for
reuse (``cnnlab.devices.reuse_freed_memory``), and the contenders are torchvision's model
again (what the allocator alone gives) and cnnlab's with the options of ``cnnlab train``: as
built, channels-last (the default), channels-last with ``--small-map-grads on``
(``cnnlab.weight_grads``), ``--compile`` (``cnnlab.devices.compiled``: ``torch.compile``
with static shapes; compilation happens in the warm-up, outside the timing) and, where the
CPU computes bf16 natively, ``--precision bf16``. A step is forward, cross-entropy, backward,
SGD with momentum (``cnnlab.deploy.training_step``). All are timed by
``cnnlab.timing.interleave``: one sample of each per round, rounds that other work slowed
dropped and re-run. Printed: the median ms per step, images/s and the median of the per-round
ratios baseline / contender (> 1: faster than the baseline). For a model torchvision lacks,
such as the LeNets, the baseline is cnnlab's own in NCHW, in this process.

    .venv/bin/python benchmarks/train_speed.py [--repeats 5] [--models resnet18,mobilenet_v2]
        [--sizes 32,224] [--no-compile] [--no-reuse-memory]
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import torch

import cnnlab
from cnnlab.deploy import torchvision_model, training_step
from cnnlab.devices import compiled, native_bf16, reuse_freed_memory
from cnnlab.interop import TORCHVISION_NAMES, from_torchvision
from cnnlab.tables import format_table
from cnnlab.timing import Contender, interleave

BATCH = 64


def step(model: torch.nn.Module, x: torch.Tensor, layout: bool, bf16: bool,
         compile_: bool, small_map: bool = False) -> Callable[[], None]:  # fmt: skip
    """One training step of a copy of ``model`` with the given options."""
    model = copy.deepcopy(model)
    if layout:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model = compiled(model)
    run = training_step(model, x, small_map)

    def timed() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            run()

    return timed


def _serve(conn: Connection, name: str, state: dict[str, torch.Tensor], x: torch.Tensor) -> None:
    """The baseline's process: torchvision's ``name`` with ``state``. Each request is a
    number of steps to run back to back; the reply is the seconds the last one took."""
    tv = torchvision_model(name, num_classes=10)
    tv.load_state_dict(state)
    run = step(tv, x, False, False, False)
    while steps := conn.recv():
        for _ in range(steps):
            start = time.perf_counter()
            run()
        conn.send(time.perf_counter() - start)


class OwnProcess(Contender):
    """torchvision's eager step in a fresh process (spawned: glibc's allocator as it starts).
    A sample is the second of two steps run back to back: idle while the others take their
    turn, the process hands its freed pages back, and its first step after that faults them
    in afresh, which a training loop, one step straight after another, does not pay."""

    def __init__(self, name: str, tv: torch.nn.Module, x: torch.Tensor) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.conn, theirs = spawn.Pipe()
        self.worker = spawn.Process(target=_serve, args=(theirs, name, tv.state_dict(), x),
                                    daemon=True)  # fmt: skip
        self.worker.start()
        super().__init__("torchvision, own process", lambda: self._steps(1))

    def _steps(self, count: int) -> float:
        self.conn.send(count)
        return self.conn.recv()

    def sample(self) -> float:
        return self._steps(2)

    def close(self) -> None:
        self.conn.send(0)
        self.worker.join()


def contenders(name: str, size: int, use_compile: bool, reuse: bool) -> list[Contender]:
    """The baseline first: torchvision's model in its own process where torchvision has the
    model (cnnlab's gets its weights), else cnnlab's own NCHW eager model; then torchvision's
    in this process (when its allocator differs) and cnnlab's with each option."""
    torch.manual_seed(0)
    ours = cnnlab.create_model(name, num_classes=10)
    x = torch.randn(BATCH, ours.input_size[0], size, size)
    if name in TORCHVISION_NAMES:
        tv = torchvision_model(name, num_classes=10)
        ours.load_state_dict(from_torchvision(name, tv.state_dict()))
        found = [OwnProcess(name, tv, x)]
        if reuse:
            found.append(Contender("torchvision", step(tv, x, False, False, False)))
    else:
        found = [Contender("cnnlab NCHW (baseline)", step(ours, x, False, False, False))]
    options = {"cnnlab": (False, False, False), "channels-last": (True, False, False)}
    if name not in TORCHVISION_NAMES:
        del options["cnnlab"]
    options["channels-last + small-map grads"] = (True, False, False, True)
    if use_compile:
        options["channels-last + compile"] = (True, False, True)
    if native_bf16(torch.device("cpu")):
        options["channels-last + bf16"] = (True, True, False)
        if use_compile:
            options["channels-last + bf16 + compile"] = (True, True, True)
    found += [Contender(label, step(ours, x, *opts)) for label, opts in options.items()]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--sizes", default="32,224")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-reuse-memory", action="store_true")
    args = parser.parse_args()
    reuse = not args.no_reuse_memory and reuse_freed_memory()
    rows = []
    for name in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            print(f"... {name} at {size} px, batch {BATCH}", file=sys.stderr, flush=True)
            found = contenders(name, size, not args.no_compile, reuse)
            timing = interleave(found, args.repeats, warmup=3, min_sample_s=0)
            for contender in found:
                if isinstance(contender, OwnProcess):
                    contender.close()
            tv = next(iter(timing.samples.values()))  # the baseline
            for label, samples in timing.samples.items():
                ratio = statistics.median(t / s for t, s in zip(tv, samples, strict=True))
                rows.append((name, size, label, f"{timing.median(label) * 1e3:,.0f}",
                             f"{BATCH / timing.median(label):,.0f}", f"{ratio:.2f}x",
                             f"{timing.kept}/{timing.rounds}",
                             f"{timing.other_cores or 0:.2f}"))  # fmt: skip
    headers = ["model", "px", "options", "ms/step", "img/s", "vs baseline", "rounds",
               "other cores"]  # fmt: skip
    print(format_table(headers, rows))
    print(
        f"batch {BATCH}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"freed memory {'reused' if reuse else 'returned (glibc default)'} in this process"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
