"""cnnlab export (ONNX, verified with onnxruntime) and cnnlab bench."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.cli import main
from cnnlab.deploy import benchmark, export_onnx, onnxruntime_session
from cnnlab.devices import max_parallel
from cnnlab.errors import CnnlabError

pytest.importorskip("onnxruntime")


class _Sized(nn.Module):
    input_size = (3, 8, 8)
    min_input_size = 1


class RandomOutput(_Sized):
    """Exports fine, but onnxruntime draws other random numbers: verification must fail."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) + torch.rand(x.shape[0], 3)


class DataDependent(_Sized):
    """Python control flow on a tensor value: torch.export cannot capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:
            return x.mean((2, 3))
        return x.amax((2, 3))


@pytest.mark.parametrize(
    ("name", "size"), [("lenet5", 32), ("mobilenet_v1_025", 32), ("googlenet", 32)]
)
def test_export_matches_pytorch_with_dynamic_batch(tmp_path, name: str, size: int) -> None:
    model = cnnlab.create_model(name).eval()
    out = tmp_path / f"{name}.onnx"
    result = export_onnx(model, out, img_size=size, dynamic_batch=True)
    chans = model.input_size[0]
    assert result.max_abs_diff < 1e-4 and result.input_shape == (-1, chans, size, size)
    session = onnxruntime_session(out, threads=1)
    x = torch.randn(5, chans, size, size)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-4, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary left


def test_cli_export_external_data(tmp_path, capsys) -> None:
    out = tmp_path / "lenet.onnx"
    assert main(["export", "lenet5", "--out", str(out), "--external-data", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data_path"] == f"{out}.data" and (tmp_path / "lenet.onnx.data").stat().st_size
    assert out.stat().st_size < 100_000  # the graph only; the weights are beside it
    session = onnxruntime_session(out)
    assert session.get_inputs()[0].shape == [1, *cnnlab.create_model("lenet5").input_size]


@pytest.mark.parametrize("module", [RandomOutput, DataDependent])
def test_failed_export_or_verification_leaves_nothing(tmp_path, module: type) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    with pytest.raises(CnnlabError, match=r"verification|export of"):
        export_onnx(module(), out)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys) -> None:
    out = tmp_path / "x.onnx"
    assert main(["export", "lenet5", "--format", "tflite", "--out", str(out)]) == 2
    assert "unsupported format 'tflite'" in capsys.readouterr().err
    assert main(["export", "lenet5", "--img-size", "8", "--out", str(out)]) == 2
    assert main(["export", "nosuchnet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and all(
        line.startswith("cnnlab: error:") for line in err.splitlines()
    )
    assert not any(tmp_path.iterdir())


GREY_32 = {"size": 32, "in_chans": 1, "mean": [0.286], "std": [0.353]}  # a run's preprocessing


def test_checkpoint_that_does_not_fit(tmp_path, capsys) -> None:
    from cnnlab.saved import save_weights

    ckpt = tmp_path / "lenet_300_100.safetensors"
    meta = {
        "model": "lenet5",
        "class_names": [str(i) for i in range(10)],
        "preprocess": GREY_32,
    }
    save_weights(cnnlab.create_model("lenet_300_100", num_classes=10, in_chans=1), ckpt, meta)
    out = tmp_path / "m.onnx"
    assert main(["export", "lenet5", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error:") and "does not fit" in err
    assert not out.exists()


def test_checkpoint_weights_are_exported(tmp_path) -> None:
    from cnnlab.saved import save_weights

    model = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    meta = {"model": "lenet5", "class_names": list("abcdefghij"), "preprocess": GREY_32}
    save_weights(model, tmp_path / "w.safetensors", meta)
    out = tmp_path / "m.onnx"
    assert (
        main(
            ["export", "lenet5", "--checkpoint", str(tmp_path / "w.safetensors"), "--out", str(out)]
        )
        == 0
    )
    session = onnxruntime_session(out)
    x = torch.randn(1, 1, 32, 32)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model.eval()(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("threads", ["0", "100000"])
def test_bench_threads_are_bounded(capsys, threads: str) -> None:
    """At least one, at most PARALLEL_PER_CPU per usable CPU: 100,000 OpenMP threads would
    exhaust the memory (a MemoryError traceback once)."""
    assert main(["bench", "lenet5", "--threads", threads, "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"cnnlab: error: --threads must be in 1..{max_parallel()} (4 per CPU this " \
        f"process may use), got {threads}\n"  # fmt: skip


def test_bench_json_reports_every_figure(capsys) -> None:
    argv = ["bench", "lenet5", "--batch-size", "1,4", "--backend", "eager,fused,onnxruntime"]
    assert main([*argv, "--repeats", "2", "--warmup", "1", "--threads", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["backend"], r["batch_size"]) for r in rows} == {
        (b, n) for b in ("eager", "fused", "onnxruntime") for n in (1, 4)
    }
    for r in rows:
        assert r["latency_ms"] > 0 and r["images_per_s"] > 0 and r["train_images_per_s"] > 0
        assert r["macs"] == cnnlab.model_info("lenet5")["reference_macs"]
        assert 0 < r["peak_fraction"] < 1.5 and r["matmul_peak_gflops"] > 0
        assert r["gflops"] == pytest.approx(2 * r["macs"] * r["batch_size"] / r["latency_ms"] / 1e6)


def test_bench_vs_torchvision_gives_a_ratio() -> None:
    (r,) = benchmark(
        ["resnet18"], img_size=32, vs_torchvision=True, train=False, repeats=2, threads=1
    )
    assert r.speedup_vs_torchvision > 0 and r.torchvision_latency_ms > 0


def test_bench_rejects_bad_arguments(capsys) -> None:
    assert main(["bench", "lenet5", "--backend", "tensorrt"]) == 2
    assert main(["bench", "lenet5", "--batch-size", "1,x"]) == 2
    assert main(["bench", "lenet5", "--vs", "torchvision"]) == 2  # no torchvision LeNet
    assert capsys.readouterr().err.count("cnnlab: error:") == 3


@pytest.mark.slow
def test_bench_compile_backend() -> None:
    (r,) = benchmark(["lenet5"], backends=["compile"], train=False, repeats=2, warmup=1)
    assert r.latency_ms > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", cnnlab.list_models())
def test_every_zoo_model_exports(tmp_path, name: str) -> None:
    """Each zoo model at its smallest input, checked against PyTorch by export_onnx itself."""
    model = cnnlab.create_model(name)
    side = model.input_size[1] if model.fixed_input_size else max(model.min_input_size, 32)
    result = export_onnx(model, tmp_path / f"{name}.onnx", img_size=side)
    assert (tmp_path / f"{name}.onnx").stat().st_size == result.bytes
