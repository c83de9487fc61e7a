"""create_model(pretrained=...): any saved file; a model's own keywords survive every file kind
and the command line (train / summary --model-kwargs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cnnlab
from cnnlab.cli import main
from cnnlab.errors import CnnlabError


def _same_trunk(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ours, theirs = a.state_dict(), b.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in ours.items() if not k.startswith("fc."))


@pytest.fixture
def saved_resnet20(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = cnnlab.create_model("resnet20", shortcut="C")
    path = tmp_path / "r20.safetensors"
    cnnlab.save(model, path)
    return model, path


def test_pretrained_keeps_the_weights_and_the_stored_keywords(saved_resnet20) -> None:
    model, path = saved_resnet20
    loaded = cnnlab.create_model("resnet20", pretrained=path)
    assert loaded.model_kwargs == {"shortcut": "C"} and loaded.training
    assert _same_trunk(model, loaded) and torch.equal(model.fc.weight, loaded.fc.weight)


def test_pretrained_with_new_classes_and_options(saved_resnet20) -> None:
    model, path = saved_resnet20
    tuned = cnnlab.create_model("resnet20", 3, pretrained=path, drop_rate=0.3, global_pool="max")
    assert tuned.fc.out_features == 3 and tuned.dropout.p == 0.3 and _same_trunk(model, tuned)
    assert tuned.model_kwargs == {"shortcut": "C", "drop_rate": 0.3, "global_pool": "max"}
    bare = cnnlab.create_model("resnet20", 0, pretrained=path, global_pool="")
    assert tuple(bare(torch.randn(2, 3, 32, 32)).shape) == (2, 64, 8, 8)
    maps = cnnlab.create_model("resnet20", pretrained=path, features_only=True)(
        torch.randn(1, 3, 32, 32)
    )
    assert [m.shape[1] for m in maps] == [16, 32, 64]


def test_pretrained_refusals(saved_resnet20, tmp_path: Path) -> None:
    _, path = saved_resnet20
    with pytest.raises(CnnlabError, match="does not fit"):
        cnnlab.create_model("resnet20", pretrained=path, shortcut="A")  # no projections: no fit
    with pytest.raises(ValueError, match="init"):
        cnnlab.create_model("resnet20", pretrained=path, init="he")
    with pytest.raises(ValueError, match="in_chans=1"):
        cnnlab.create_model("resnet20", in_chans=1, pretrained=path)
    with pytest.raises(CnnlabError, match="holds resnet20"):
        cnnlab.create_model("resnet32", pretrained=path)
    with pytest.raises(CnnlabError):
        cnnlab.create_model("resnet20", pretrained=tmp_path / "missing.safetensors")


def test_pretrained_takes_torchvision_weights(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18(num_classes=1000).eval()
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    model = cnnlab.create_model("resnet18", pretrained=f"torchvision:{tmp_path / 'tv.pth'}")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x))


def test_stored_keywords_are_checked(tmp_path: Path) -> None:
    model = cnnlab.create_model("resnet20")
    model.model_kwargs = {"shortcut": "C", "evil": [1] * 10}
    with pytest.raises(CnnlabError, match="model keywords"):
        cnnlab.save(model, tmp_path / "bad.safetensors")


def test_compressed_file_keeps_the_keywords(tmp_path: Path) -> None:
    from cnnlab.compress import store

    torch.manual_seed(0)
    model = cnnlab.create_model("resnet20", shortcut="C")
    store.save(model, tmp_path / "r20.cnz")
    loaded, meta = cnnlab.load(tmp_path / "r20.cnz")
    assert meta["model_kwargs"] == {"shortcut": "C"} and _same_trunk(model, loaded)


def test_cli_train_and_eval_keep_the_keywords(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "resnet20", "--data", "synthetic", "--epochs", "1", "--limit", "16",
            "--batch-size", "8", "--no-progress", "--no-tensorboard", "--out", str(out),
            "--model-kwargs", "shortcut=C", "drop_path_rate=0.1"]  # fmt: skip
    assert main(args) == 0
    model, meta = cnnlab.load(out)
    assert meta["model_kwargs"] == {"shortcut": "C", "drop_path_rate": 0.1}
    assert model.conv2_x[0].shortcut is not None  # option C projects even where shapes agree
    capsys.readouterr()
    assert main(["eval", "resnet20", "--checkpoint", str(out), "--data", "synthetic",
                 "--limit", "8", "--json"]) == 0  # fmt: skip
    assert "top1" in json.loads(capsys.readouterr().out)


def test_cli_reports_a_bad_keyword_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "resnet20", "--data", "synthetic", "--out", str(out),
                 "--model-kwargs", "shortcut=Q"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cnnlab: error: shortcut must be one of 'A', 'B', 'C' (Sec. 3.3), got 'Q'"]
    assert main(["summary", "resnet20", "--model-kwargs", "nosuch=1"]) == 2
    assert "does not take 'nosuch'" in capsys.readouterr().err
    assert not out.exists()


def test_cli_summary_counts_the_switched_model(capsys) -> None:
    assert main(["summary", "resnet34", "--model-kwargs", "shortcut=A", "--json"]) == 0
    option_a = json.loads(capsys.readouterr().out)["params"]
    assert main(["summary", "plain34", "--json"]) == 0
    assert option_a == json.loads(capsys.readouterr().out)["params"] == 21_623_848


def test_a_features_only_model_is_not_saved_but_rebuilt(saved_resnet20, tmp_path: Path) -> None:
    _, path = saved_resnet20
    features = cnnlab.create_model("resnet20", pretrained=path, features_only=True)
    with pytest.raises(CnnlabError, match="features_only=True"):
        cnnlab.save(features, tmp_path / "f.safetensors")
