"""--precision fp32 | bf16 | auto: autocast where the device computes bf16 natively."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from cnnlab import devices
from cnnlab.cli import main
from cnnlab.errors import CnnlabError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_where_native(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    assert devices.autocast_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    assert devices.autocast_dtype("fp32", CPU) is None
    assert devices.autocast_dtype(None, CPU) is None  # no option: fp32 on a CPU ...
    assert devices.autocast_dtype(None, CUDA) == torch.bfloat16  # ... bf16 on a GPU


def test_bf16_without_native_support_warns(monkeypatch) -> None:
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="emulated"):
        assert devices.autocast_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(CnnlabError, match="--precision"):
        devices.autocast_dtype("fp16", CPU)


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path: Path) -> None:
    flags = tmp_path / "cpuinfo"
    flags.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    real_path = devices.Path
    monkeypatch.setattr(devices, "Path", lambda p: flags if p == "/proc/cpuinfo" else real_path(p))
    assert devices.native_bf16(CPU)
    flags.write_text("flags\t\t: fpu avx2 fma\n")
    assert not devices.native_bf16(CPU)


def test_train_and_eval_under_bf16(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "lenet5", "--data", "synthetic", "--limit", "64", "--epochs", "1",
            "--batch-size", "16", "--no-progress", "--no-tensorboard", "--out", str(out),
            "--precision", "bf16", "--json"]  # fmt: skip
    with warnings.catch_warnings():  # emulated bf16 warns on CPUs without it (tested above)
        warnings.simplefilter("ignore")
        assert main(args) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["val_loss"])
    assert main(["eval", "lenet5", "--checkpoint", str(out), "--data", "synthetic",
                 "--limit", "32", "--precision", "fp32", "--json"]) == 0  # fmt: skip
    assert 0 <= json.loads(capsys.readouterr().out)["top1"] <= 1


def test_resume_may_change_the_precision(tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["train", "lenet5", "--data", "synthetic", "--limit", "32", "--batch-size", "16",
            "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main([*base, "--epochs", "1", "--precision", "fp32"]) == 0
    assert main([*base, "--epochs", "2", "--resume", "--precision", "auto"]) == 0


def test_bench_reports_its_precision(capsys) -> None:
    args = ["bench", "lenet5", "--no-train", "--repeats", "2", "--warmup", "1",
            "--backend", "eager,onnxruntime", "--precision", "auto", "--json"]  # fmt: skip
    assert main(args) == 0
    rows = {r["backend"]: r["precision"] for r in json.loads(capsys.readouterr().out)}
    expected = "bf16" if devices.native_bf16(CPU) else "fp32"
    assert rows == {"eager": expected, "onnxruntime": "fp32"}
