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
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed = tmp_path / "killed"
    proc = _run(killed)
    state = killed / "last.state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
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
