"""cnnlab.train: the loop, evaluation, checkpoints, fit (resume, NaN, Ctrl-C) and the CLI."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from cnnlab import registry
from cnnlab.cli import main
from cnnlab.data import build_loaders
from cnnlab.errors import CnnlabError
from cnnlab.saved import load_weights, read_meta, save_weights
from cnnlab.train import (
    Distillation,
    LRSchedule,
    NonFiniteLossError,
    TrainConfig,
    evaluate,
    fit,
    load_state,
    train_one_epoch,
)
from cnnlab.train import trainer as trainer_module
from test_data import write_fashion
from test_train_helpers import TINY_MODELS, TinyNet

QUICK = {"progress": False, "tensorboard": False, "log": None}


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, entry in TINY_MODELS.items():
        monkeypatch.setitem(registry._REGISTRY, name, entry)


def cfg(**kw) -> TrainConfig:
    base = dict(model="tiny", data="synthetic", epochs=2, batch_size=64, lr=0.05, img_size=16)
    return TrainConfig(**{**base, **kw})


def test_train_one_epoch_and_aux_weight() -> None:
    train, _, _ = build_loaders("synthetic", img_size=16, in_chans=3, batch_size=64)
    losses = {}
    for w in (0.0, 0.3):
        torch.manual_seed(0)
        model = TinyNet(aux=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no update: compare the loss only
        train.sampler.set_epoch(0)
        stats = train_one_epoch(model, train, opt, aux_weight=w)
        assert set(stats) >= {"loss", "top1", "images"} and stats["images"] == 512
        losses[w] = stats["loss"]
    assert losses[0.3] > losses[0.0] * 1.2  # two aux losses of about the same size, x0.3


class FixedLogits(nn.Module):
    """Returns the logits stored for each input index (x holds the index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.long()]


def test_evaluate_top1_top5_per_class_confusion() -> None:
    logits = torch.tensor(
        [
            [9.0, 1, 0, 0, 0, 0],  # true 0, predicted 0
            [9.0, 1, 0, 0, 0, 0],  # true 1, predicted 0 (1 is second: a top-5 hit)
            [0, 0, 9.0, 0, 0, 0],  # true 2, predicted 2
            [9.0, 8, 7, 6, 5, -1],  # true 5, ranked last: misses top-5 too
        ]
    )
    labels = torch.tensor([0, 1, 2, 5])
    loader = [(torch.arange(2), labels[:2]), (torch.arange(2, 4), labels[2:])]
    r = evaluate(FixedLogits(logits), loader)
    assert r["top1"] == 0.5 and r["top5"] == 0.75 and r["images"] == 4
    assert r["per_class"] == [1.0, 0.0, 1.0, None, None, 0.0]
    assert r["confusion"][1][0] == 1 and r["confusion"][5][0] == 1 and r["confusion"][2][2] == 1
    expected = nn.functional.cross_entropy(logits, labels).item()
    assert r["loss"] == pytest.approx(expected, rel=1e-6)


def test_non_finite_loss_stops_before_the_step() -> None:
    train, _, _ = build_loaders("synthetic", img_size=16, in_chans=3, batch_size=64)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        loss = nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if len(calls) == 3 else loss * 0

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="nan at batch 2") as info:
        train_one_epoch(model, train, opt, loss_fn=loss_fn)
    assert info.value.batch == 2
    for k, v in model.state_dict().items():
        assert torch.isfinite(v.float()).all()
        if v.dtype.is_floating_point and "running" not in k:
            assert torch.equal(v, before[k])  # zero loss: SGD with zero grads left them


def test_distillation_loss_and_pull_toward_the_teacher() -> None:
    torch.manual_seed(0)
    logits, target, x = torch.randn(8, 10), torch.randn(8, 10), torch.arange(8)
    teacher = FixedLogits(target)
    task = torch.tensor(2.0)
    soft = (target / 3).softmax(1)
    kl = (soft * (soft.log() - (logits / 3).log_softmax(1))).sum(1).mean()
    mixed = Distillation(teacher, weight=0.25, temperature=3.0).loss(task, logits, x)
    assert float(mixed) == pytest.approx(0.75 * 2.0 + 0.25 * 9 * float(kl), rel=1e-5)
    assert float(Distillation(teacher, 1.0).loss(task, target, x)) == pytest.approx(0, abs=1e-6)
    for bad in ({"weight": 1.5}, {"temperature": 0.0}):
        with pytest.raises(ValueError, match="distillation needs"):
            Distillation(teacher, **bad)
    # Pure distillation: the student's outputs move toward the teacher's, which stays put.
    train, _, _ = build_loaders("synthetic", img_size=16, in_chans=3, batch_size=64)
    teacher_net, student = TinyNet(), TinyNet()
    distill = Distillation(teacher_net, 1.0, 1.0)  # puts the teacher in eval mode
    frozen = {k: v.clone() for k, v in teacher_net.state_dict().items()}
    probe = next(iter(train))[0]

    def gap() -> float:
        student.eval()
        with torch.no_grad():
            t, s = teacher_net(probe).log_softmax(1), student(probe).log_softmax(1)
        return float(nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))

    start = gap()
    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    for _ in range(3):
        train_one_epoch(student, train, opt, distill=distill)
    assert gap() < start / 4
    assert all(torch.equal(v, frozen[k]) for k, v in teacher_net.state_dict().items())
    assert not teacher_net.training and not any(p.requires_grad for p in teacher_net.parameters())


def test_schedules() -> None:
    cos = LRSchedule("cosine", 100, warmup_steps=10)
    assert cos(0) == pytest.approx(1 / 11) and cos(10) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0, abs=1e-12)
    step = LRSchedule("step", 100)
    assert [step(0), step(50), step(80)] == pytest.approx([1.0, 0.1, 0.01])
    one = LRSchedule("onecycle", 100)
    assert one(0) == pytest.approx(1 / 25) and one(30) == pytest.approx(1.0)
    assert one(100) == pytest.approx(1 / 25e4)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(model="tiny", schedule="linear")


def test_fit_writes_checkpoints_metrics_and_drops_aux(tmp_path: Path) -> None:
    out = tmp_path / "run"
    s = fit(cfg(model="tiny_aux", epochs=3), out, progress=False, tensorboard=True, log=None)
    assert s["epochs"] == 3 and s["val_top1"] > 0.5 and not s["interrupted"]
    assert {p.name for p in out.iterdir()} >= {
        "last.safetensors", "last.state.pt", "best.safetensors", "metrics.csv", "tensorboard"
    }  # fmt: skip
    assert any((out / "tensorboard").iterdir())
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and float(rows[-1]["lr"]) < 0.05
    meta = read_meta(out)
    assert meta["model"] == "tiny_aux" and len(meta["class_names"]) == 10
    best = TinyNet(aux=False)
    load_weights(best, out / "best.safetensors")  # the inference model: no aux heads
    from safetensors import safe_open

    with safe_open(str(out / "best.safetensors"), "pt") as f:
        assert not any(k.startswith("aux") for k in f.keys())  # noqa: SIM118
    with safe_open(str(out / "last.safetensors"), "pt") as f:
        assert any(k.startswith("aux") for k in f.keys())  # noqa: SIM118
    with pytest.raises(CnnlabError, match="already holds a run"):
        fit(cfg(model="tiny_aux", epochs=3), out, **QUICK)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_after_interrupt_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = cfg(epochs=3, augment=False)
    fit(config, tmp_path / "straight", **QUICK)

    real = trainer_module.run_epoch
    count = {"n": 0}

    def interrupting(*args, **kw):
        count["n"] += 1
        if count["n"] == 2:  # Ctrl-C in the second epoch
            kw["on_batch"] = lambda n, loss, hits, i: (_ for _ in ()).throw(KeyboardInterrupt)
        return real(*args, **kw)

    monkeypatch.setattr(trainer_module, "run_epoch", interrupting)
    s = fit(config, tmp_path / "cut", **QUICK)
    assert s["interrupted"] and s["epochs"] == 1
    assert (tmp_path / "cut" / "interrupted.safetensors").exists()
    monkeypatch.setattr(trainer_module, "run_epoch", real)
    s = fit(config, tmp_path / "cut", resume=True, **QUICK)
    assert s["epochs"] == 3
    a, b = (
        _weights(tmp_path / "straight" / "last.safetensors"),
        _weights(tmp_path / "cut" / "last.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CnnlabError, match="changed: lr"):
        fit(cfg(epochs=3, lr=0.1), tmp_path / "cut", resume=True, **QUICK)


def test_resume_takes_another_spelling_of_the_same_settings(tmp_path: Path, monkeypatch) -> None:
    """Fashion-MNIST by name or by its folder (through a link), and --img-size left to the
    default or given as the size the run chose: the same run; another folder is not."""
    folder = write_fashion(tmp_path / "fm")
    (tmp_path / "link").symlink_to(folder)
    monkeypatch.setenv("CNNLAB_DATA", str(folder))
    fit(cfg(data="fashion-mnist", img_size=None, epochs=1), tmp_path / "run", **QUICK)
    size = read_meta(tmp_path / "run")["preprocess"]["size"]
    again = cfg(data=str(tmp_path / "link"), img_size=size, epochs=2)
    assert fit(again, tmp_path / "run", resume=True, **QUICK)["epochs"] == 2
    other = write_fashion(tmp_path / "other")
    with pytest.raises(CnnlabError, match="changed: data"):
        fit(cfg(data=str(other), img_size=size, epochs=3), tmp_path / "run", resume=True, **QUICK)
    with pytest.raises(CnnlabError, match=f"changed: img_size {size} -> {size + 4}"):
        fit(cfg(data=str(folder), img_size=size + 4, epochs=3), tmp_path / "run", resume=True,
            **QUICK)  # fmt: skip


def test_families_that_diverge_at_the_default_lr_take_their_recipes() -> None:
    """SGD lr 0.05 gave a NaN loss within 12 steps for these (docs/training.md)."""
    for name in ("lenet5_caffe", "alexnet", "vgg16_bn", "vgg11"):
        assert TrainConfig(model=name).learning_rate == 0.01
        assert TrainConfig(model=name, lr=0.2).learning_rate == 0.2
        assert TrainConfig(model=name, optimizer="adamw").learning_rate == 1e-3
    assert TrainConfig(model="lenet5").learning_rate == 0.05
    assert TrainConfig(model="resnet18").learning_rate == 0.05


class NaNAfter(TinyNet):
    """Produces NaN logits from the 12th training forward pass on (epoch 2, batch 4)."""

    calls = 0

    def forward(self, x: torch.Tensor):
        out = super().forward(x)
        if self.training:
            NaNAfter.calls += 1
            if NaNAfter.calls >= 12:
                return out * float("nan")
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = registry.ModelEntry(**{**TINY_MODELS["tiny"].__dict__, "builder": NaNAfter})
    monkeypatch.setitem(registry._REGISTRY, "tiny", entry)
    NaNAfter.calls = 0
    with pytest.raises(CnnlabError, match=r"loss is nan at step 12 \(epoch 2, batch 4\)") as info:
        fit(cfg(epochs=3), tmp_path, **QUICK)  # 8 steps per epoch
    assert "last good checkpoint" in str(info.value) and "(epoch 1)" in str(info.value)
    assert load_state(tmp_path / "last.state.pt")["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path / "last.safetensors").values())


def test_diverged_weights_stop_before_their_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step of epoch 2 makes the weights infinite though every training loss was
    finite: the validation loss is NaN, and the run stops before that epoch's checkpoint
    replaces the last good one (or the best weights)."""
    real, count = trainer_module.run_epoch, {"n": 0}

    def diverging(model, *args, **kw):
        stats = real(model, *args, **kw)
        count["n"] += 1
        if count["n"] == 2:
            with torch.no_grad():
                model.fc.weight.fill_(float("inf"))
        return stats

    monkeypatch.setattr(trainer_module, "run_epoch", diverging)
    with pytest.raises(CnnlabError, match=r"validation loss is nan after epoch 2") as info:
        fit(cfg(epochs=3), tmp_path, **QUICK)
    assert "the last good checkpoint is" in str(info.value) and "(epoch 1)" in str(info.value)
    assert load_state(tmp_path / "last.state.pt")["epoch"] == 1
    for name in ("last", "best"):
        weights = _weights(tmp_path / f"{name}.safetensors").values()
        assert all(torch.isfinite(t).all() for t in weights), name
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2


class Evil:
    """Unpickling this would create a file: the loaders must refuse it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_state_file_with_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil_torch, evil_pickle = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"format": "cnnlab.train-state/1", "x": Evil(marker)}, evil_torch)
    evil_pickle.write_bytes(pickle.dumps(Evil(marker)))
    for path in (evil_torch, evil_pickle):
        with pytest.raises(CnnlabError, match=r"holds pickled code.*not loaded"):
            load_state(path)
    assert not marker.exists()


def _trained(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    fit(cfg(epochs=1), out, **QUICK)
    return out


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "foreign", "pickle", "shape"])
def test_load_weights_errors(tmp_path: Path, kind: str) -> None:
    good = _trained(tmp_path) / "best.safetensors"
    bad = tmp_path / "bad.safetensors"
    model = TinyNet()
    if kind == "garbage":
        bad.write_bytes(b"\x00" * 100)
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[:-40])
    elif kind == "foreign":
        save_file({"w": torch.zeros(2)}, str(bad))
    elif kind == "pickle":
        torch.save(model.state_dict(), bad)
    elif kind == "shape":
        model = TinyNet(num_classes=4)
        bad = good
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CnnlabError) as info:
        load_weights(model, bad)
    assert "\n" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_cli_train_eval_predict(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    args = ["train", "tiny", "--data", "synthetic", "--epochs", "3", "--batch-size", "64",
            "--img-size", "16", "--out", str(out), "--no-progress", "--json"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 3 and summary["val_top1"] > 0.3
    assert main(["eval", "tiny", "--checkpoint", str(out), "--data", "synthetic", "--json",
                 "--plot", str(tmp_path / "cm.png")]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(summary["best_top1"])
    assert len(result["confusion"]) == 10 and (tmp_path / "cm.png").stat().st_size > 1000
    assert main(["eval", "tiny", "--checkpoint", str(out), "--data", "synthetic"]) == 0
    assert "top-5" in capsys.readouterr().out
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(images[-1])
    assert main(["predict", "tiny", "--checkpoint", str(out), *map(str, images), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 2 and len(preds[0]["top"]) == 5
    probs = [t["probability"] for t in preds[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert preds[0]["top"][0]["class"].startswith("class")


@pytest.mark.parametrize("stored", [None, 20])
def test_cli_eval_compressed_at_its_stored_input_size(
    tmp_path: Path, monkeypatch, capsys, stored: int | None
) -> None:
    import cnnlab.train.inference as inference
    from cnnlab.compress import save

    path = tmp_path / "t.cnz"
    save(registry.build_model("tiny"), path, extra={} if stored is None else {"img_size": stored})
    sizes: list[int] = []

    def spy(*args, **kwargs):
        sizes.append(kwargs["img_size"])
        return build_loaders(*args, **kwargs)

    monkeypatch.setattr(inference, "build_loaders", spy)
    assert main(["eval", "tiny", "--compressed", str(path), "--data", "synthetic", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 128
    assert sizes == [stored or 16]  # the file's size, else the model's native one
    assert main(["eval", "tiny_aux", "--compressed", str(path), "--data", "synthetic"]) == 2
    assert "holds tiny, not tiny_aux" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["garbage", "pickle", "missing"])
def test_cli_bad_checkpoint_is_one_line_exit_2(tmp_path: Path, capsys, kind: str) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "model.safetensors"
    if kind == "garbage":
        ckpt.write_bytes(b"PK\x03\x04 not a checkpoint")
    elif kind == "pickle":
        ckpt.write_bytes(pickle.dumps(Evil(marker)))
    rc = main(["eval", "tiny", "--checkpoint", str(ckpt), "--data", "synthetic"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("cnnlab: error:") and err.count("\n") == 1
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.state.pt").write_bytes(pickle.dumps(Evil(marker)))
    save_weights(TinyNet(), run / "last.safetensors", {"step": 8})
    rc = main(["train", "tiny", "--data", "synthetic", "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "last.state.pt' is not a weights-only checkpoint" in err
    assert err.count("\n") == 1 and not marker.exists()


def test_cli_eval_strict_and_seed_reach_the_data(tmp_path: Path, capsys, monkeypatch) -> None:
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(4):
                pixels = np.full((12, 12, 3), 40 + 150 * c + i, np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "tiny", "--data", str(tmp_path), "--epochs", "1", "--batch-size", "4",
                 "--img-size", "16", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    (tmp_path / "val" / "a" / "junk.png").write_bytes(b"not an image")
    args = ["eval", "tiny", "--checkpoint", str(out), "--data", str(tmp_path), "--json"]
    with pytest.warns(UserWarning, match="junk.png"):
        assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--strict"]) == 2
    assert "corrupt image" in capsys.readouterr().err
    # --seed reaches the split, so --val-split holds out the images training held out
    import cnnlab.train.inference as inference

    seen = []
    real = inference.build_loaders
    monkeypatch.setattr(
        inference, "build_loaders", lambda *a, **kw: seen.append(kw["seed"]) or real(*a, **kw)
    )
    single = ["--data", str(tmp_path / "train"), "--val-split", "0.5", "--seed", "7"]
    assert main(["eval", "tiny", "--checkpoint", str(out), *single]) == 0
    assert seen == [7]
