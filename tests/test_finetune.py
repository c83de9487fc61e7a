"""Fine-tuning: init_from any saved weights, frozen backbones and layers, get_classifier,
build_optimizer, TrainConfig validation and the CLI's errors for each bad input."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import cnnlab
from cnnlab import registry
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.saved import read_meta
from cnnlab.train import TrainConfig, build_optimizer, fit
from cnnlab.train import trainer as trainer_module
from cnnlab.train.finetune import freeze, frozen_modules
from test_train_helpers import TINY_MODELS, TinyNet

QUICK = {"progress": False, "tensorboard": False, "log": None}
CLI_QUICK = ["--no-progress", "--no-tensorboard"]


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, entry in TINY_MODELS.items():
        monkeypatch.setitem(registry._REGISTRY, name, entry)
    rbf = registry.ModelEntry(**{**registry._REGISTRY["lenet5"].__dict__, "name": "lenet5_rbf",
                                 "defaults": {"head": "rbf"}})  # fmt: skip
    monkeypatch.setitem(registry._REGISTRY, "lenet5_rbf", rbf)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A tiny ImageFolder: 2 classes x 6 RGB 32x32 PNGs in train/ and in val/."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 80, (32, 32, 3)) + 120 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def _tiny_run(tmp_path: Path, name: str = "source") -> Path:
    out = tmp_path / name
    cfg = TrainConfig(model="tiny", data="synthetic", epochs=1, batch_size=64, img_size=16)
    fit(cfg, out, **QUICK)
    return out


def _equal_except(a: dict, b: dict, prefixes: tuple[str, ...]) -> list[str]:
    """Keys that differ between the two state dicts, among those not under ``prefixes``."""
    return [k for k in a if not k.startswith(prefixes) and not torch.equal(a[k], b[k])]


# --------------------------------------------------------------------------- the interface


@pytest.mark.parametrize("name", cnnlab.list_models())
def test_get_classifier_is_what_reset_classifier_replaces(name: str) -> None:
    with torch.device("meta"):
        model = cnnlab.create_model(name)
        head = model.get_classifier()
        assert any(True for _ in head.parameters())
        model.reset_classifier(3)
    linears = [m for m in model.get_classifier().modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.out_features == 3 for m in linears)
    assert not any(p is q for p in head.parameters() for q in model.parameters())


def test_freeze_backbone_leaves_only_the_classifier() -> None:
    with torch.device("meta"):
        model = cnnlab.create_model("resnet18", num_classes=5)
    keys = set(model.state_dict())
    frozen = freeze(model, backbone=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    assert len(frozen) == len(list(model.parameters())) - 2
    assert set(model.state_dict()) == keys  # hooks, not new modules or buffers


def test_freeze_until_a_layer_in_registration_order() -> None:
    with torch.device("meta"):
        model = cnnlab.create_model("resnet18")
    names = frozen_modules(model, until="conv3_x")  # torchvision's layer2; changes nothing
    assert names[0] == "conv1" and names[-1].startswith("conv3_x.")
    assert all(p.requires_grad for p in model.parameters())
    frozen = freeze(model, until="conv3_x")
    tops = {n.split(".")[0] for n in frozen}
    assert tops == {"conv1", "conv2_x", "conv3_x"}
    for n, p in model.named_parameters():
        assert p.requires_grad == (n.split(".")[0] not in tops), n
    with torch.device("meta"):
        model = cnnlab.create_model("resnet18")
    frozen = freeze(model, until="conv4_x.0")  # a dotted path reaches into a stage
    assert frozen[-1].startswith("conv4_x.0.") and model.conv4_x[1].conv1.conv.weight.requires_grad


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        ("resnet18", {"until": "layer9"}, "top-level layers are conv1, maxpool, conv2_x"),
        ("resnet18", {"until": "fc"}, "leaves no parameter to train"),
        ("resnet18", {"until": "conv1", "backbone": True}, "mutually exclusive"),
        ("lenet5_rbf", {"backbone": True}, "EuclideanRBF) has no trainable parameters"),
        ("plain", {"backbone": True}, "has no get_classifier()"),
    ],
)
def test_freeze_errors(model: str, kwargs: dict, message: str) -> None:
    if model == "plain":
        net: nn.Module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    else:
        with torch.device("meta"):
            net = cnnlab.create_model(model)
    before = [p.requires_grad for p in net.parameters()]
    with pytest.raises(CnnlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        freeze(net, **kwargs)
    assert [p.requires_grad for p in net.parameters()] == before  # untouched


def test_frozen_batch_norm_keeps_its_statistics() -> None:
    model = TinyNet()
    freeze(model, backbone=True)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "bn." in k}
    opt = build_optimizer(model, "sgd", 0.1, 0.0)
    model.train()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.zeros(8).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert model.conv.weight.grad is None and model.fc.weight.grad is not None


def test_build_optimizer_groups_and_options() -> None:
    model = TinyNet()
    model.conv.weight.requires_grad_(False)
    sgd = build_optimizer(model, "sgd", 0.1, 1e-4)
    decay, no_decay = sgd.param_groups
    assert [p.shape for p in decay["params"]] == [model.fc.weight.shape]
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    caffe = build_optimizer(model, "sgd", 0.1, 1e-4, momentum=0.5, nesterov=False, decay_1d=True)
    (group,) = caffe.param_groups
    assert len(group["params"]) == 4 and group["weight_decay"] == 1e-4  # bn w/b, fc w/b
    assert caffe.defaults["momentum"] == 0.5 and not caffe.defaults["nesterov"]
    adamw = build_optimizer(model, "adamw", 1e-3, 0.05)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="optimizer must be"):
        build_optimizer(model, "rmsprop", 0.1, 0.0)
    model.requires_grad_(False)
    with pytest.raises(CnnlabError, match="no trainable parameters"):
        build_optimizer(model, "sgd", 0.1, 0.0)


# --------------------------------------------------------------------------- config checks

BAD_OPTIONS = [
    (["--lr", "nan"], "lr"),
    (["--lr", "0"], "lr"),
    (["--weight-decay", "-1"], "weight_decay"),
    (["--weight-decay", "inf"], "weight_decay"),
    (["--clip-grad-norm", "0"], "clip_grad_norm"),
    (["--epochs", "0"], "epochs"),
    (["--batch-size", "0"], "batch_size"),
    (["--img-size", "0"], "img_size"),
    (["--img-size", "5000"], "img_size"),
    (["--warmup-epochs", "3"], "warmup_epochs"),
    (["--warmup-epochs", "nan"], "warmup_epochs"),
    (["--label-smoothing", "1"], "label_smoothing"),
    (["--aux-weight", "-0.5"], "aux_weight"),
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**63)], "seed"),
    (["--workers", "-1"], "workers"),
    (["--workers", "100000"], "workers must be an integer in 0.."),  # not 100,000 processes
    (["--limit", "0"], "limit"),
    (["--val-split", "1"], "val_split"),
    (["--freeze-backbone", "--freeze", "conv"], "mutually exclusive"),
]


def _cli_error(args: list[str], capsys: pytest.CaptureFixture, out: Path) -> str:
    rc = main([*args, "--out", str(out), *CLI_QUICK])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("cnnlab: error:") and err.count("\n") == 1, err
    assert not out.exists()  # no run folder
    return err


@pytest.mark.parametrize(("options", "name"), BAD_OPTIONS)
def test_cli_rejects_bad_numbers_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, options: list[str], name: str
) -> None:
    args = ["train", "tiny", "--data", "synthetic", "--epochs", "2", *options]
    assert name in _cli_error(args, capsys, tmp_path / "run")


def test_config_checks_in_python() -> None:
    TrainConfig(model="tiny", lr=1e-3, warmup_epochs=2, epochs=2, seed=2**63 - 1, val_split=0.5)
    for bad in ({"lr": math.inf}, {"epochs": 1.5}, {"seed": True}, {"optimizer": "adam"},
                {"in_chans": 2}, {"freeze": ""}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(model="tiny", **bad)


# --------------------------------------------------------------------------- init_from


def test_init_from_torchvision_with_frozen_backbone(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture
) -> None:
    torchvision = pytest.importorskip("torchvision")
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=1000).state_dict(), weights)
    source, _ = cnnlab.load(f"torchvision:{weights}", "resnet18")
    before = {k: v.clone() for k, v in source.state_dict().items()}
    common = ["--data", str(folder), "--img-size", "32", "--epochs", "1", "--batch-size", "4",
              "--lr", "0.1", *CLI_QUICK]  # fmt: skip
    out = tmp_path / "probe"
    assert main(["train", "resnet18", "--init-from", f"torchvision:{weights}",
                 "--freeze-backbone", "--out", str(out), *common]) == 0  # fmt: skip
    assert "initialised from" in capsys.readouterr().out
    after = load_file(str(out / "last.safetensors"))
    assert after.keys() == before.keys()
    assert _equal_except(before, after, ("fc.",)) == []  # weights and BN statistics
    assert after["fc.weight"].shape == (2, 512)
    meta = read_meta(out / "last.safetensors")
    assert meta["init_from"] == f"torchvision:{weights}"
    assert (meta["num_classes"], meta["in_chans"], meta["class_names"]) == (2, 3, ["cat", "dog"])
    # the run works everywhere a checkpoint goes
    assert main(["eval", "resnet18", "--checkpoint", str(out), "--data", str(folder)]) == 0
    assert "top-1" in capsys.readouterr().out
    image = folder / "val" / "dog" / "0.png"
    assert main(["predict", "resnet18", "--checkpoint", str(out), str(image), "--top", "1"]) == 0
    assert capsys.readouterr().out.count("%") == 1  # one class and its probability

    out = tmp_path / "layers"
    assert main(["train", "resnet18", "--init-from", f"torchvision:{weights}",
                 "--freeze", "conv3_x", "--out", str(out), *common]) == 0  # fmt: skip
    after = load_file(str(out / "last.safetensors"))
    tops = {k.split(".")[0] for k in _equal_except(before, after, ("fc.",))}
    assert tops == {"conv4_x", "conv5_x"}  # conv1, conv2_x, conv3_x bit-identical


def test_init_from_cnnlab_run_and_file(tmp_path: Path, folder: Path) -> None:
    source = _tiny_run(tmp_path)
    before = load_file(str(source / "best.safetensors"))
    cfg = TrainConfig(model="tiny", data=str(folder), epochs=1, batch_size=4, img_size=16,
                      init_from=str(source), freeze_backbone=True)  # fmt: skip
    fit(cfg, tmp_path / "probe", **QUICK)
    after = load_file(str(tmp_path / "probe" / "best.safetensors"))
    assert _equal_except(before, after, ("fc.",)) == [] and after["fc.weight"].shape == (2, 128)
    # a cnnlab .safetensors file, all layers trained: everything moves, the head is new
    file = source / "best.safetensors"
    cfg = TrainConfig(model="tiny", data=str(folder), epochs=1, batch_size=4, img_size=16,
                      init_from=str(file))  # fmt: skip
    fit(cfg, tmp_path / "full", **QUICK)
    after = load_file(str(tmp_path / "full" / "best.safetensors"))
    assert not torch.equal(before["conv.weight"], after["conv.weight"])
    assert read_meta(tmp_path / "full")["init_from"] == str(file)
    _, meta = cnnlab.load(tmp_path / "full", "tiny")
    assert meta["num_classes"] == 2 and meta["class_names"] == ["cat", "dog"]


def test_new_classifier_only_where_the_classes_differ(tmp_path: Path, folder: Path) -> None:
    source = _tiny_run(tmp_path)  # synthetic: class0 .. class9
    logs: list[str] = []
    common = {"epochs": 1, "batch_size": 4, "img_size": 16, "init_from": str(source)}
    fit(TrainConfig(model="tiny", data="synthetic", **common), tmp_path / "same",
        **{**QUICK, "log": logs.append})  # fmt: skip
    assert not any("new classifier" in line for line in logs)
    renamed = tmp_path / "renamed"
    for split in ("train", "val"):
        for i in range(10):  # ten classes again, other names
            (renamed / split / f"k{i}").mkdir(parents=True)
            src = folder / split / ("cat", "dog")[i % 2] / "0.png"
            (renamed / split / f"k{i}" / "0.png").write_bytes(src.read_bytes())
    fit(TrainConfig(model="tiny", data=str(renamed), **common), tmp_path / "other",
        **{**QUICK, "log": logs.append})  # fmt: skip
    assert any("new classifier for 10 classes (the source had 10)" in line for line in logs)


def test_resume_with_init_from_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _tiny_run(tmp_path)
    cfg = TrainConfig(model="tiny", data="synthetic", epochs=3, batch_size=64, img_size=16,
                      init_from=str(source), freeze="bn")  # fmt: skip
    fit(cfg, tmp_path / "straight", **QUICK)
    real = trainer_module.run_epoch
    count = {"n": 0}

    def interrupting(*args, **kw):
        count["n"] += 1
        if count["n"] == 2:
            kw["on_batch"] = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt)
        return real(*args, **kw)

    monkeypatch.setattr(trainer_module, "run_epoch", interrupting)
    assert fit(cfg, tmp_path / "cut", **QUICK)["interrupted"]
    monkeypatch.setattr(trainer_module, "run_epoch", real)
    os.rename(source, tmp_path / "moved")  # resuming needs only the run folder
    assert fit(cfg, tmp_path / "cut", resume=True, **QUICK)["epochs"] == 3
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CnnlabError, match="changed: freeze 'bn' -> None"):
        fit(TrainConfig(**{**cfg.__dict__, "freeze": None}), tmp_path / "cut", resume=True,
            **QUICK)  # fmt: skip


# --------------------------------------------------------------------------- CLI errors


class Evil:
    """Unpickling this would run a shell command: cnnlab must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cli_bad_sources_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    train = ["train", "tiny", "--data", "synthetic", "--epochs", "1"]
    err = _cli_error([*train, "--freeze", "layer3"], capsys, out)
    assert "top-level layers are conv, bn, pool, drop, fc" in err
    err = _cli_error(["train", "lenet5_rbf", "--data", "synthetic", "--freeze-backbone"],
                     capsys, out)  # fmt: skip
    assert "no trainable parameters" in err

    weights = tmp_path / "x.pth"
    torch.save(TinyNet().state_dict(), weights)
    err = _cli_error(["train", "lenet5", "--init-from", f"torchvision:{weights}"], capsys, out)
    assert "no torchvision counterpart" in err

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Evil(marker)))
    err = _cli_error([*train, "--init-from", str(evil)], capsys, out)
    assert "refused" in err and not marker.exists()

    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 128)}, wrong)
    err = _cli_error([*train, "--init-from", str(wrong)], capsys, out)
    assert "shape conv.weight (4, 3, 3, 3) vs (8, 3, 3, 3)" in err and "missing bn." in err

    grey = _tiny_run(tmp_path)  # 3-channel weights for 1-channel input
    err = _cli_error([*train, "--in-chans", "1", "--init-from", str(grey)], capsys, out)
    assert "--in-chans 3" in err

    err = _cli_error([*train, "--init-from", str(tmp_path / "missing.safetensors")], capsys, out)
    assert "does not exist" in err
