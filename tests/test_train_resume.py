"""Exact resume: a run killed with SIGKILL mid-training and resumed ends bit-identical.

Checkpoints are written at the end of every epoch; the resumed run redoes the epoch it was
killed in. The kill lands right after the first checkpoint appears (early in epoch 2).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnlab import registry
from cnnlab.train import TrainConfig, fit, load_state
from test_train_helpers import TINY_MODELS

TESTS = Path(__file__).parent
SCRIPT = """
import sys
from test_train_helpers import register_tiny
register_tiny()
from cnnlab.cli import main
sys.exit(main(sys.argv[1:]))
"""
ARGS = [
    *("train", "tiny", "--data", "synthetic", "--epochs", "4", "--batch-size", "32"),
    *("--img-size", "24", "--lr", "0.05", "--augment", "--no-progress", "--no-tensorboard"),
]


def _run(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *ARGS, "--out", str(out), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def _after_first_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    state, deadline = out / "last.state.pt", time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed = tmp_path / "killed"
    proc = _run(killed)
    state = killed / "last.state.pt"
    _after_first_checkpoint(proc, killed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert load_state(state)["epoch"] < 4  # it really was cut short

    resumed = _run(killed, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()

    torch.set_num_threads(1)
    for name, entry in TINY_MODELS.items():
        monkeypatch.setitem(registry._REGISTRY, name, entry)
    config = TrainConfig(model="tiny", data="synthetic", epochs=4, batch_size=32, img_size=24,
                         lr=0.05, augment=True)  # fmt: skip
    fit(config, tmp_path / "straight", progress=False, tensorboard=False, log=None)
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(killed / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_sigterm_to_the_group_stops_as_ctrl_c_does(tmp_path: Path, workers: str) -> None:
    """SIGTERM to the process group, DataLoader workers included (as ``timeout`` or a batch
    scheduler sends it): one line, exit 143, the weights of the moment saved; --resume ends
    the run."""
    out = tmp_path / "run"
    proc = _run(out, "--workers", workers)
    _after_first_checkpoint(proc, out)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()
    assert err.decode() == "cnnlab: terminated\n"  # no traceback, not even an ignored one
    assert (out / "interrupted.safetensors").is_file()
    assert load_state(out / "last.state.pt")["epoch"] < 4  # it really was cut short

    resumed = _run(out, "--resume", "--workers", workers)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()
    assert load_state(out / "last.state.pt")["epoch"] == 4
