"""Compression recipes: the paper's tables, the sensitivity rule, TOML files, the CLI default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cnnlab
from cnnlab.cli import main
from cnnlab.compress import CompressionConfig, pipeline, read_header
from cnnlab.compress import recipe as recipes
from cnnlab.errors import CnnlabError


def test_paper_recipe_is_the_papers_table() -> None:
    model = cnnlab.create_model("lenet_300_100")
    r = recipes.from_paper(model)
    assert r.sparsity == {"hidden.fc1": 0.92, "hidden.fc2": 0.91, "fc": 0.74}
    assert r.bits == {"hidden.fc1": 6, "hidden.fc2": 6, "fc": 6}
    with torch.device("meta"):
        vgg = recipes.from_paper(cnnlab.create_model("vgg16"))
    assert vgg.sparsity["classifier.fc6"] == 0.96 and vgg.bits["features.conv1_1"] == 8
    with pytest.raises(CnnlabError, match="no per-layer table for resnet18"):
        recipes.from_paper(cnnlab.create_model("resnet18"))


def test_sensitivity_rule_picks_the_largest_fraction_within_tolerance() -> None:
    model = cnnlab.create_model("lenet_300_100")

    def top1(m: torch.nn.Module) -> float:
        # Pretend that only the output layer matters: 1 point lost per 10% of it pruned.
        return 90.0 - 10 * float((m.fc.weight == 0).float().mean())

    r = recipes.from_sensitivity(model, top1, tolerance=7.0, fractions=(0.5, 0.7, 0.9))
    assert r.sparsity == {"hidden.fc1": 0.9, "hidden.fc2": 0.9, "fc": 0.7}
    assert r.bits == {}  # the bits are --conv-bits / --fc-bits (plan below)
    assert all(bool((p != 0).all()) for p in model.parameters() if p.dim() > 1)  # restored


def test_toml_recipe(tmp_path: Path) -> None:
    model = cnnlab.create_model("lenet5_caffe")
    path = tmp_path / "r.toml"
    path.write_text(
        '[layers]\n"features.*" = { sparsity = 0.5 }\nfc1 = { sparsity = 0.9, bits = 4 }\n'
    )
    r = recipes.from_file(model, path)
    assert r.sparsity == {"features.conv1": 0.5, "features.conv2": 0.5, "fc1": 0.9}
    assert r.bits == {"fc1": 4}
    plan = pipeline.plan(model, CompressionConfig(recipe=str(path), conv_bits=6), lambda m: 0.0)
    assert plan.bits == {"features.conv1": 6, "features.conv2": 6, "fc1": 4, "fc2": 5}
    for text, message in [
        ("[layers]\nnope = { sparsity = 0.5 }\n", "matches no layer"),
        ("[layers]\nfc1 = { sparsity = 1.5 }\n", "sparsity must be"),
        ("[layers]\nfc1 = { bits = 40 }\n", "bits must be"),
        ("[layers]\nfc1 = { kept = 0.1 }\n", "must be"),
        ("[other]\n", "one non-empty"),
        ("not toml = = ", "not valid TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(CnnlabError, match=message):
            recipes.from_file(model, path)
    with pytest.raises(CnnlabError, match="does not exist"):
        recipes.from_file(model, tmp_path / "missing.toml")


@pytest.fixture
def checkpoint(tmp_path: Path) -> str:
    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    cnnlab.save(cnnlab.create_model("lenet_300_100", num_classes=10, in_chans=3), path)
    return str(path)


def _compress(checkpoint: str, out: Path, *extra: str) -> list[str]:
    return ["compress", "lenet_300_100", "--checkpoint", checkpoint, "--data", "synthetic",
            "--limit", "128", "--batch-size", "64", "--retrain-epochs", "1",
            "--finetune-epochs", "0", "--out", str(out), *extra]  # fmt: skip


def test_cli_default_recipe_is_printed_and_stored(checkpoint: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.cnz"
    assert main(_compress(checkpoint, out)) == 0
    text = capsys.readouterr().out
    assert "recipe: paper" in text and "8.0%" in text  # hidden.fc1 keeps 8%
    stored = read_header(out)["extra"]
    assert stored["recipe"]["source"] == "paper" and stored["recipe"]["bits"]["fc"] == 6
    assert stored["class_names"] == [f"class{i}" for i in range(10)]
    model, meta = cnnlab.load(out)
    assert meta["recipe"]["sparsity"]["hidden.fc1"] == 0.92 and meta["assumed"] == []
    kept = float((model.hidden.fc1.weight != 0).float().mean())
    assert kept == pytest.approx(0.08, abs=0.002)

    sens = tmp_path / "s.cnz"
    assert main([*_compress(checkpoint, sens), "--recipe", "sensitivity", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"]["source"] == "sensitivity"
    assert set(result["recipe"]["sparsity"]) == {"hidden.fc1", "hidden.fc2", "fc"}


def test_cli_bad_recipe_is_one_line_and_no_file(checkpoint: str, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[layers]\n"conv9" = { sparsity = 0.5 }\n')
    out = tmp_path / "m.cnz"
    for extra in (["--recipe", str(bad)], ["--recipe", "paper", "--sparsity", "0.5"]):
        assert main(_compress(checkpoint, out, *extra)) == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith("cnnlab: error:")
        assert not out.exists()
