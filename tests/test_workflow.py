"""The README's worked example, end to end from the CLI: torchvision weights -> fine-tune with a
frozen backbone -> compress with the default recipe -> predict and export from the .cnz ->
decompress -> eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

import cnnlab
from cnnlab.cli import main

COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200)}


def _image_folder(root: Path, per_class: int = 8) -> Path:
    """train/ and val/ with two classes of noisy 32x32 RGB images, told apart by colour."""
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                noise = torch.randint(-40, 40, (32, 32, 3), generator=g)
                pixels = (torch.tensor(rgb) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def _run(argv: list[str], capsys) -> dict:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_torchvision_to_finetune_to_cnz_to_everything(tmp_path: Path, capsys) -> None:
    data = str(_image_folder(tmp_path / "data"))
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(weights=None)
    torch.save(theirs.state_dict(), tmp_path / "resnet18.pth")
    run = str(tmp_path / "run")
    common = ["--data", data, "--batch-size", "4"]
    train = ["train", "resnet18", "--init-from", f"torchvision:{tmp_path / 'resnet18.pth'}",
             "--freeze-backbone", *common, "--img-size", "32", "--epochs", "2", "--lr", "0.05",
             "--out", run, "--no-progress", "--no-tensorboard"]  # fmt: skip
    trained = _run(train, capsys)
    assert trained["epochs"] == 2
    tuned, meta = cnnlab.load(run, "resnet18")
    assert meta["class_names"] == ["blue", "red"] and meta["preprocess"]["size"] == 32
    source, _ = cnnlab.load(f"torchvision:{tmp_path / 'resnet18.pth'}", "resnet18")
    for key, value in source.state_dict().items():  # frozen: weights and BN statistics kept
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(tuned.state_dict()[key], value), key
    assert tuple(tuned.fc.weight.shape) == (2, 512)  # a new classifier for the two classes

    cnz = str(tmp_path / "m.cnz")
    compress = ["compress", "resnet18", "--checkpoint", run, *common, "--out", cnz,
                "--retrain-epochs", "1", "--finetune-epochs", "1"]  # fmt: skip
    compressed = _run(compress, capsys)
    assert compressed["recipe"]["source"] == "sensitivity"  # resnet18 has no paper table
    assert compressed["total"]["ratio"] > 3
    stored_top1 = compressed["stages"][-1]["top1"]

    image = str(Path(data) / "val" / "red" / "0.png")
    predicted = _run(["predict", "resnet18", "--checkpoint", cnz, image], capsys)
    assert {t["class"] for t in predicted[0]["top"]} == {"blue", "red"}
    exported = _run(["export", "resnet18", "--checkpoint", cnz, "--out", str(tmp_path / "m.onnx")],
                    capsys)  # fmt: skip
    assert exported["input_shape"] == [1, 3, 32, 32] and exported["max_abs_diff"] < 1e-3

    plain = str(tmp_path / "d.safetensors")
    assert main(["decompress", cnz, "--out", plain]) == 0
    assert "wrote" in capsys.readouterr().out
    evaluated = _run(["eval", "resnet18", "--checkpoint", plain, *common], capsys)
    assert round(100 * evaluated["top1"], 2) == stored_top1
