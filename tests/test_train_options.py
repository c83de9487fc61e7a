"""`cnnlab train` channels-last (the default; `--no-channels-last`), `--compile` and freed
memory kept for reuse (the default; `--no-reuse-memory`): same run, same files, resumable with
the option switched, and a machine without a C++ compiler refused before anything is written;
reuse as glibc's allocator sees it: no page faults for a freed block allocated again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab import devices
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.saved import load_weights
from cnnlab.train import fit
from test_train import QUICK, cfg, tiny_models  # noqa: F401 (the tiny models, registered)
from test_train_helpers import TinyNet


def test_channels_last_trains_the_same_run(tmp_path: Path) -> None:
    plain = fit(cfg(channels_last=False), tmp_path / "plain", **QUICK)
    nhwc = fit(cfg(), tmp_path / "nhwc", **QUICK)  # channels-last is the default
    assert nhwc["val_top1"] == pytest.approx(plain["val_top1"], abs=0.02)
    a, b = TinyNet(), TinyNet()
    load_weights(a, tmp_path / "plain" / "last.safetensors")
    load_weights(b, tmp_path / "nhwc" / "last.safetensors")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-4), name  # same computation, another layout


def test_the_options_may_change_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(cfg(epochs=1), out, **QUICK)
    summary = fit(cfg(epochs=2, channels_last=False, reuse_memory=False), out, resume=True,
                  **QUICK)  # fmt: skip
    assert summary["epochs"] == 2


# Minor page faults of filling a freed 256 MiB block again, in a fresh process; argv[1]: reuse.
# The block filled again is 64 KiB smaller: PyTorch allocates with posix_memalign, which asks
# for the size plus the alignment, a few bytes more than the freed chunk holds when a small
# allocation has taken the space behind it (as .sum()'s result may).
FAULTS = """
import resource, sys, torch
from cnnlab.devices import reuse_freed_memory
applied = sys.argv[1] == "1" and reuse_freed_memory()
for _ in range(3):  # the allocator settles
    torch.ones(2**26).sum()  # 256 MiB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(2**26 - 2**14).sum()
print(int(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_reused_memory_is_not_faulted_in_again() -> None:
    def faults(reuse: bool) -> tuple[int, int]:
        run = subprocess.run([sys.executable, "-c", FAULTS, str(int(reuse))], text=True,
                             capture_output=True, check=True)  # fmt: skip
        applied, count = map(int, run.stdout.split())
        return applied, count

    applied, fresh = faults(False)
    assert applied == 0 and fresh >= 2**28 / 2**21  # a fault per page (4 KiB, or 2 MiB THP)
    applied, reused = faults(True)
    assert applied == 1 and reused < fresh / 20


def test_compile_without_a_compiler_is_one_error_and_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    with pytest.raises(CnnlabError, match="needs a C\\+\\+ compiler"):
        fit(cfg(compile=True), tmp_path / "run", **QUICK)
    assert not (tmp_path / "run").exists()
    args = ["train", "tiny", "--data", "synthetic", "--epochs", "1", "--compile", "--out",
            str(tmp_path / "cli"), "--no-progress", "--no-tensorboard"]  # fmt: skip
    assert main(args) == 2
    assert "C++ compiler" in capsys.readouterr().err and not (tmp_path / "cli").exists()


@pytest.mark.slow
def test_compile_trains_and_saves_plain_weights(tmp_path: Path) -> None:
    summary = fit(cfg(epochs=1, compile=True), tmp_path / "run", **QUICK)
    assert summary["epochs"] == 1
    model = TinyNet()
    load_weights(model, tmp_path / "run" / "last.safetensors")  # no "_orig_mod." prefixes


def test_the_cli_turns_channels_last_off(tmp_path: Path) -> None:
    args = ["train", "tiny", "--data", "synthetic", "--epochs", "1", "--img-size", "16",
            "--no-channels-last", "--out", str(tmp_path / "run"), "--no-progress",
            "--no-tensorboard"]  # fmt: skip
    assert main(args) == 0
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["config"]["channels_last"] is False


def test_the_cli_and_the_config_turn_memory_reuse_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnlab.train import trainer

    calls = []
    monkeypatch.setattr(trainer, "reuse_freed_memory", lambda: calls.append(1) or True)
    fit(cfg(reuse_memory=False), tmp_path / "off", **QUICK)
    assert calls == []
    fit(cfg(), tmp_path / "on", **QUICK)
    assert calls == [1]
    args = ["train", "tiny", "--data", "synthetic", "--epochs", "1", "--img-size", "16",
            "--no-reuse-memory", "--out", str(tmp_path / "run"), "--no-progress",
            "--no-tensorboard"]  # fmt: skip
    assert main(args) == 0 and calls == [1]
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["config"]["reuse_memory"] is False
