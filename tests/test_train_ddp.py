"""Distributed training: 2 CPU processes (gloo) match one process on the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cnnlab.data import build_loaders
from cnnlab.train import train_one_epoch
from test_train_helpers import TinyNet


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet(bn=False)  # batch norm statistics are per process under DDP
    model.drop.p = 0.0
    return model


def _grads_and_epoch(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gradients of the first global batch, then the weights after one SGD epoch."""
    train, _, _ = build_loaders("synthetic", img_size=16, in_chans=3, batch_size=64)
    train.sampler.set_epoch(0)
    x, y = next(iter(train))
    nn.functional.cross_entropy(model(x), y).backward()
    inner = getattr(model, "module", model)
    result = {f"grad.{n}": p.grad.clone() for n, p in inner.named_parameters()}
    result["labels"] = y
    inner.zero_grad()
    train.sampler.set_epoch(0)
    stats = train_one_epoch(model, train, torch.optim.SGD(model.parameters(), lr=0.1))
    result["images"] = torch.tensor(stats["images"])
    result.update({f"weight.{k}": v.clone() for k, v in inner.state_dict().items()})
    return result


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = _grads_and_epoch(nn.parallel.DistributedDataParallel(_model()))
        labels = [torch.empty_like(result["labels"]) for _ in range(world)]
        dist.all_gather(labels, result["labels"])
        result["labels"] = torch.cat(labels)
        if rank == 0:
            torch.save(result, out)
        dist.barrier()  # leave together, as in fit: a rank that tore gloo down early aborted
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batch(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    single = _grads_and_epoch(_model())
    # rank r takes every other sample of the same permutation: together, the same batch
    assert sorted(ddp["labels"].tolist()) == sorted(single["labels"].tolist())
    assert int(ddp["images"]) == int(single["images"]) == 512
    for k, v in single.items():
        if k.startswith(("grad.", "weight.")):
            torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")  # fmt: skip
def test_torchrun_cli(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "cnnlab", "train",
           "lenet_300_100", "--data", "synthetic", "--in-chans", "1", "--epochs", "1",
           "--batch-size", "64", "--out", str(tmp_path / "run"), "--no-progress",
           "--no-tensorboard", "--json"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # only rank 0 prints
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    assert (tmp_path / "run" / "best.safetensors").exists()
    assert len(list((tmp_path / "run").glob("*.tmp"))) == 0
