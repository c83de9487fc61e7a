"""`cnnlab train` channels-last (the default; `--no-channels-last`) and `--compile`: same run,
same files, resumable with the option switched, and a machine without a C++ compiler refused
before anything is written."""

from __future__ import annotations

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
    summary = fit(cfg(epochs=2, channels_last=False), out, resume=True, **QUICK)
    assert summary["epochs"] == 2


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
