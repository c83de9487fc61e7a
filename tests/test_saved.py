"""cnnlab.save / cnnlab.load: every kind of file, and every command that takes weights."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import cnnlab
from cnnlab.cli import main
from cnnlab.compress import save as save_cnz
from cnnlab.data import Preprocess
from cnnlab.errors import CnnlabError
from cnnlab.saved import save_weights

CLASSES = [f"kind{i}" for i in range(10)]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One lenet5 saved as a run folder, a cnnlab .safetensors, a .cnz and a plain state dict."""
    root = tmp_path_factory.mktemp("lenet")
    torch.manual_seed(0)
    model = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    pre = Preprocess(32, 1, (0.5,), (0.25,))
    (root / "run").mkdir()
    cnnlab.save(model, root / "run" / "best.safetensors", class_names=CLASSES, preprocess=pre)
    cnnlab.save(model, root / "m.safetensors", class_names=CLASSES, preprocess=pre)
    save_cnz(model, root / "m.cnz", extra={"class_names": CLASSES, "preprocess": pre.as_dict()})
    torch.save(model.state_dict(), root / "m.pth")
    return {"run": root / "run", "safetensors": root / "m.safetensors", "cnz": root / "m.cnz",
            "state-dict": root / "m.pth", "model": model}  # fmt: skip


@pytest.mark.parametrize("kind", ["run", "safetensors", "cnz", "state-dict"])
def test_every_kind_loads_the_same_model(lenet: dict, kind: str) -> None:
    model, meta = cnnlab.load(lenet[kind], "lenet5")
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(model(x), lenet["model"].eval()(x))
    assert meta["model"] == "lenet5" and meta["num_classes"] == 10 and meta["in_chans"] == 1
    expected_kind = {"run": "cnnlab", "safetensors": "cnnlab"}.get(kind, kind)
    assert meta["kind"] == expected_kind
    if kind == "state-dict":  # a bare state dict says nothing: defaults, and it says so
        assert meta["assumed"] == ["class_names", "preprocess"]
        assert meta["class_names"] == [str(i) for i in range(10)]
    else:
        assert meta["assumed"] == [] and meta["class_names"] == CLASSES
        assert meta["preprocess"]["std"] == [0.25]


def test_load_into_a_model_and_replace_the_head(lenet: dict) -> None:
    target = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    model, _ = cnnlab.load(lenet["cnz"], target)
    assert model is target
    fresh, meta = cnnlab.load(lenet["safetensors"], num_classes=3)
    assert fresh(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    assert meta["num_classes"] == 3 and "class_names" in meta["assumed"]
    for bad in (0, 2.5, "5", True):
        with pytest.raises(CnnlabError, match=r"num_classes must be in 1\.\.100000"):
            cnnlab.load(lenet["safetensors"], num_classes=bad)


def test_torchvision_weights_convert_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(weights=None).eval()
    torch.save(theirs.state_dict(), tmp_path / "r18.pth")
    save_file(theirs.state_dict(), str(tmp_path / "r18.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    for source in ("torchvision:" + str(tmp_path / "r18.pth"), tmp_path / "r18.safetensors"):
        ours, meta = cnnlab.load(source, "resnet18")
        assert torch.equal(ours(x), theirs(x))
        assert meta["kind"] == "torchvision" and meta["class_names"][:2] == ["tench", "goldfish"]
        assert meta["preprocess"]["size"] == 224 and meta["assumed"]


def test_timm_weights_convert_exactly(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    theirs = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=7).eval()
    torch.save(theirs.state_dict(), tmp_path / "m.pt")
    ours, meta = cnnlab.load("timm:" + str(tmp_path / "m.pt"), "mobilenet_v1")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), theirs(x))
    assert meta["kind"] == "timm" and meta["num_classes"] == 7


def _evil(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"fc.weight": Evil()}))
    return path


def test_hostile_and_wrong_files_are_one_error(tmp_path: Path, lenet: dict) -> None:
    marker = tmp_path / "ran"
    cases = {
        _evil(tmp_path / "evil.pth", marker): (
            r"evil\.pth' is not a weights-only checkpoint \(it holds pickled code\); "
            "it was refused and not loaded$"
        ),
        tmp_path / "missing.pth": "does not exist",
        tmp_path: "no best.safetensors",
    }
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases[fifo] = "not a regular file"
    torch.save([1, 2], tmp_path / "list.pt")
    cases[tmp_path / "list.pt"] = "does not hold a state dict"
    (tmp_path / "junk.pt").write_bytes(b"\x80\x05K\x01.")
    cases[tmp_path / "junk.pt"] = "not a readable weights file"
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(lenet["safetensors"].read_bytes()[:300])
    cases[truncated] = "not a readable safetensors"
    for path, message in cases.items():
        with pytest.raises(CnnlabError, match=message):
            cnnlab.load(path, "resnet18")
    assert not marker.exists()
    with pytest.raises(CnnlabError, match="holds lenet5, not resnet18"):
        cnnlab.load(lenet["safetensors"], "resnet18")
    with pytest.raises(CnnlabError, match="name the model"):
        cnnlab.load(lenet["state-dict"])
    with pytest.raises(CnnlabError, match=r"as torchvision weights for resnet34: .*layer2\.0"):
        cnnlab.load("torchvision:" + str(_resnet18_pth(tmp_path)), "resnet34")
    with pytest.raises(CnnlabError, match="no torchvision counterpart"):
        cnnlab.load("torchvision:" + str(lenet["state-dict"]), "lenet5")


def test_a_file_of_another_kind_is_named_as_such(tmp_path: Path, lenet: dict) -> None:
    """Not torch's parser error on a CSV, a PNG or a cut zip ('pop from empty list',
    'Unsupported operand 80', '[Errno 22] Invalid argument')."""
    (tmp_path / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    _png(tmp_path / "x.png")
    (tmp_path / "cut.pth").write_bytes(lenet["state-dict"].read_bytes()[:5000])
    for name, reason in (("metrics.csv", "not a .cnz, a safetensors or a torch.save file"),
                         ("x.png", "not a .cnz, a safetensors or a torch.save file"),
                         ("cut.pth", "a truncated or corrupt torch.save (zip) file")):  # fmt: skip
        with pytest.raises(CnnlabError) as info:
            cnnlab.load(tmp_path / name, "lenet5")
        assert (
            str(info.value) == f"{str(tmp_path / name)!r} is not a readable weights file: {reason}"
        )


def _resnet18_pth(folder: Path) -> Path:
    path = folder / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_file_claims_are_bounded(tmp_path: Path, lenet: dict) -> None:
    model = lenet["model"]
    huge = Preprocess(20000, 1, (0.5,), (1.0,))
    with pytest.raises(CnnlabError, match="above the limit"):
        cnnlab.save(model, tmp_path / "big.safetensors", preprocess=huge)
    save_weights(
        model, tmp_path / "big.safetensors", {"model": "lenet5", "preprocess": huge.as_dict()}
    )
    with pytest.raises(CnnlabError, match="above the limit"):
        cnnlab.load(tmp_path / "big.safetensors")
    # A .cnz header claiming 50 million classes is refused before building anything.
    save_cnz(model, tmp_path / "lie.cnz", config={"num_classes": 50_000_000, "in_chans": 1})
    with pytest.raises(CnnlabError, match=r"lie\.cnz': 50000000 classes is outside 1\.\.100000"):
        cnnlab.load(tmp_path / "lie.cnz")


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("L", (28, 28), 128).save(path)
    return path


@pytest.mark.parametrize("kind", ["run", "safetensors", "cnz", "state-dict"])
def test_every_command_takes_every_kind(lenet: dict, kind: str, tmp_path: Path, capsys) -> None:
    ckpt = str(lenet[kind])
    image = str(_png(tmp_path / "x.png"))
    assert main(["predict", "lenet5", "--checkpoint", ckpt, image, "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert top[0]["class"] in (CLASSES if kind != "state-dict" else [str(i) for i in range(10)])
    assert main(["summary", "lenet5", "--checkpoint", ckpt, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 60_850
    assert main(["gradients", "lenet5", "--checkpoint", ckpt, "--steps", "1", "--json"]) == 0
    assert "lenet5" in json.loads(capsys.readouterr().out)
    data = ["--data", "synthetic", "--limit", "16", "--batch-size", "8"]
    assert main(["eval", "lenet5", "--checkpoint", ckpt, *data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 16
    assert main(["export", "lenet5", "--checkpoint", ckpt, "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 200_000 and "wrote" in capsys.readouterr().out
    bench = ["bench", "lenet5", "--checkpoint", ckpt, "--repeats", "1", "--warmup", "0"]
    assert main([*bench, "--no-train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["model"] == "lenet5"


def test_decompress_writes_a_checkpoint_every_command_takes(lenet: dict, tmp_path: Path) -> None:
    out = tmp_path / "d.safetensors"
    assert main(["decompress", str(lenet["cnz"]), "--out", str(out)]) == 0
    model, meta = cnnlab.load(out, "lenet5")
    assert meta["class_names"] == CLASSES and meta["assumed"] == []
    assert meta["source"] == str(lenet["cnz"])
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), lenet["model"](x))


def test_cli_bad_checkpoint_is_one_line(tmp_path: Path, capsys) -> None:
    evil = _evil(tmp_path / "evil.pth", tmp_path / "ran")
    for argv in (
        ["predict", "resnet18", "--checkpoint", str(evil), str(tmp_path / "x.png")],
        ["export", "resnet18", "--checkpoint", str(evil), "--out", str(tmp_path / "m.onnx")],
        ["summary", "resnet18", "--checkpoint", str(evil)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("cnnlab: error:") and err.count("\n") == 1 and "refused" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "m.onnx").exists()
