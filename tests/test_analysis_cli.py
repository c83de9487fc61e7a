"""The measuring commands: ``cnnlab summary``, ``compare`` and ``gradients``."""

from __future__ import annotations

import csv
import io
import json

import pytest

from cnnlab.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_vgg16(capsys):
    code, out, _ = run(capsys, "summary", "vgg16", "--depth", "1")
    assert code == 0
    assert "138,357,544" in out
    assert "15,470,264,320" in out and "FLOPs = 2 x MACs" in out
    assert "15,237,608" in out and "58.1 MiB" in out
    assert "NOT COUNTED" not in out


def test_summary_json_and_batch(capsys):
    code, out, _ = run(
        capsys, "summary", "mobilenet_v1", "--input", "3x128x128", "--batch-size", "2", "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["batch_size"] == 2 and data["input_size"] == [3, 128, 128]
    assert data["macs"] == 2 * 186_400_768 and data["flops"] == 2 * data["macs"]
    assert set(data["training_bytes"]) == {"sgd_momentum", "adam"}


def test_summary_lists_uncounted_layers(capsys):
    code, out, _ = run(capsys, "summary", "lenet5", "--input", "3x32x32")
    assert code == 0
    assert "NOT COUNTED" in out and "Subsampling x2" in out


@pytest.mark.slow
def test_summary_measure_memory(capsys):
    code, out, _ = run(
        capsys, "summary", "mobilenet_v1_025", "--input", "3x64x64", "--measure-memory"
    )
    assert code == 0 and "measured forward" in out and "measured training" in out


def test_compare_csv_json_and_plot(capsys, tmp_path):
    code, out, _ = run(capsys, "compare", "mobilenet_v1*", "vgg16", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["model"] for r in rows][-1] == "vgg16"
    assert len(rows) == len({r["model"] for r in rows}) == 8
    code, out, _ = run(
        capsys, "compare", "resnet18", "plain18", "--json", "--plot", str(tmp_path / "z.png")
    )
    data = json.loads(out)
    assert code == 0 and {d["model"] for d in data} == {"resnet18", "plain18"}
    assert (tmp_path / "z.png").stat().st_size > 1000


@pytest.mark.slow
def test_compare_with_latency(capsys, tmp_path):
    plot = tmp_path / "lat.svg"
    code, out, _ = run(
        capsys, "compare", "lenet*", "--measure-latency", "--batch-size", "4", "--plot", str(plot)
    )
    assert code == 0 and "latency b1 (ms)" in out and "img/s b4" in out
    assert plot.read_text().startswith("<?xml")


def test_gradients_random_data_and_plot(capsys, tmp_path):
    plot = tmp_path / "g.png"
    code, out, _ = run(
        capsys, "gradients", "resnet18", "plain18", "--input", "3x32x32", "--steps", "2",
        "--batch-size", "4", "--clip-grad-norm", "1.0", "--plot", str(plot),
    )  # fmt: skip
    assert code == 0 and plot.stat().st_size > 1000
    assert "resnet18: 21 weight layers" in out and "plain18: 18 weight layers" in out
    assert "clipped to 1" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "vgg61"], "unknown model 'vgg61'; did you mean"),
        (["summary", "vgg16", "--input", "3x224"], "--input must look like 3x224x224"),
        (["summary", "vgg16", "--input", "3x16x16"], "the minimum is 32x32"),
        (["compare", "nothing*"], "no model matches 'nothing*'"),
        (["compare", "vgg16", "--plot", "/no/such/folder/x.png"], "does not exist"),
        (["compare", "vgg16", "--plot", "x.gif"], "must end in .png, .svg or .pdf"),
        (["gradients", "vgg16", "--plot", "/no/such/folder/g.png"], "does not exist"),
        (["gradients", "nosuchnet"], "unknown model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("cnnlab: error: ") and message in err


def test_gradients_of_a_fresh_model_use_ten_random_classes(capsys) -> None:
    """A fresh model meets a fixed random batch of 10 classes (what docs/analysis.md shows)."""
    import torch

    import cnnlab
    from cnnlab.analysis import gradient_norms
    from cnnlab.analysis.gradients import random_batches

    # resnet18's own default is 1000 classes: the fixed batch must still have 10
    assert main(["gradients", "resnet18", "--input", "3x32x32", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["resnet18"]["init"]
    torch.manual_seed(0)
    model = cnnlab.create_model("resnet18", num_classes=10)
    expected = gradient_norms(model, random_batches((3, 32, 32), 10, 8, 0), 0).init
    assert got == pytest.approx(expected, rel=1e-6)
