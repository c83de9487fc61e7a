"""Detectors through the same commands, end to end on a tiny generated Fashion-MNIST set:
``cnnlab train`` (checkpoints, exact resume, --init-from, --strict), ``cnnlab eval`` (COCO
mAP by pycocotools), ``cnnlab predict`` (--json, --draw) and ``cnnlab export`` (ONNX)."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.cli import main
from cnnlab.data import Preprocess, fashion_mnist_folder
from cnnlab.data.datasets import FASHION_MNIST_SYSTEM_DIR
from cnnlab.detect import (
    DetectionConfig,
    DetectionDataset,
    RunSetup,
    coco_results,
    make_detection,
    prepare,
    score_results,
    train_detector,
)
from cnnlab.detect import evaluate as detect_evaluate
from cnnlab.detect import run as detect_run
from cnnlab.detect import train as detect_train
from cnnlab.errors import CnnlabError
from cnnlab.saved import read_weights
from cnnlab.weight_grads import small_map_weight_grads

FMNIST = fashion_mnist_folder(FASHION_MNIST_SYSTEM_DIR)
pytestmark = pytest.mark.skipif(FMNIST is None, reason="Fashion-MNIST not installed")
MODEL = "ssdlite_mobilenet_v2"
SIZE = 96  # canvases and detector input: small enough for a CPU test
TINY = ["--img-size", str(SIZE), "--in-chans", "1", "--batch-size", "4", "--seed", "3"]


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", MODEL, "--data", str(data), "--out", str(out), "--epochs", "1",
                 *TINY, *extra])  # fmt: skip


def _one_error(capsys, code: int, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("cnnlab: error:") and "\n" not in err, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("det") / "set"
    make_detection(out, 8, 4, seed=1, size=SIZE)
    return out


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ssd"
    assert _train(data, out) == 0
    return out


@pytest.mark.slow
def test_train_writes_a_committed_checkpoint_and_metrics(run: Path) -> None:
    names = {p.name for p in run.iterdir()}
    assert {"last.safetensors", "last.state.pt", "last.json", "best.safetensors",
            "metrics.csv"} <= names  # fmt: skip
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".last-")]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"]
    assert float(rows[0]["val_loss"]) > 0
    model, meta = cnnlab.load(run, MODEL)
    assert meta["class_names"][0] == "T-shirt/top" and meta["num_classes"] == 10
    assert model.input_size == (1, SIZE, SIZE) and meta["preprocess"]["size"] == SIZE
    assert json.loads((run / "last.json").read_text())["step"] == 2  # 8 images, batch 4


def test_ctrl_c_just_after_the_commit_is_exit_130_with_the_committed_summary(
    data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cut(out: Path) -> None:  # Ctrl-C once last.json is committed, before last.* are named
        raise KeyboardInterrupt

    monkeypatch.setattr(detect_run, "recover_checkpoint", cut)
    assert _train(data, tmp_path / "a", "--json") == 130
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 1 and summary["best_val_loss"] == summary["val_loss"] > 0
    assert _train(data, tmp_path / "b") == 130
    said = capsys.readouterr().out.splitlines()[-1]
    assert said.startswith(f"{MODEL}: val loss") and "(best " in said


def test_a_nan_validation_loss_stops_before_the_checkpoint(
    data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = detect_run.evaluate_loss

    def diverged(*args, **kwargs) -> dict:
        return {**real(*args, **kwargs), "loss": float("nan")}

    monkeypatch.setattr(detect_run, "evaluate_loss", diverged)
    out = tmp_path / "run"
    _one_error(capsys, _train(data, out), "validation loss is nan after epoch 1", "diverged")
    assert not (out / "last.json").exists() and not (out / "best.safetensors").exists()


@pytest.mark.slow
def test_resume_ends_where_an_uninterrupted_run_does(data: Path, tmp_path) -> None:
    def stop_after_epoch_1(line: str) -> None:  # said once epoch 1 is committed
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    config = DetectionConfig(epochs=2, batch_size=4, seed=3, augment=True)
    said = []
    summary = train_detector(
        MODEL,
        data,
        resumed,
        config,
        RunSetup(in_chans=1, image_size=SIZE),
        log=lambda line: (said.append(line), stop_after_epoch_1(line)),
    )
    assert summary["interrupted"] and summary["epochs"] == 1
    assert "last complete checkpoint is epoch 1" in said[-1]
    assert (resumed / "interrupted.safetensors").is_file()  # the weights of the moment
    assert json.loads((resumed / "last.json").read_text())["step"] == 2
    assert _train(data, resumed, "--epochs", "2", "--augment", "--resume") == 0
    straight = tmp_path / "straight"
    assert _train(data, straight, "--epochs", "2", "--augment") == 0
    a, _ = read_weights(resumed / "last.safetensors")
    b, _ = read_weights(straight / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((resumed / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_ctrl_c_before_an_epoch_ends_exits_130(data: Path, tmp_path, monkeypatch, capsys) -> None:
    def cut(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(detect_run, "_epoch", cut)
    assert _train(data, tmp_path / "run") == 130
    out = capsys.readouterr().out
    assert "interrupted: weights saved" in out and "a new run starts afresh" in out
    assert (tmp_path / "run" / "interrupted.safetensors").is_file()
    assert not (tmp_path / "run" / "last.json").exists()


def test_prepare_sets_the_layout_the_autocast_dtype_and_memory_reuse(monkeypatch) -> None:
    def conv(model):  # the stem's 3x3 over RGB: a weight whose two layouts differ
        return next(p for p in model.parameters() if p.dim() == 4)

    calls = []
    monkeypatch.setattr(detect_train, "reuse_freed_memory", lambda: calls.append(1) or True)

    model = cnnlab.create_model(MODEL, num_classes=2, image_size=SIZE)
    with warnings.catch_warnings():  # bf16 warns on a CPU without native bf16
        warnings.simplefilter("ignore")
        assert prepare(model, DetectionConfig(precision="bf16")) == torch.bfloat16
    assert conv(model).is_contiguous(memory_format=torch.channels_last)
    plain = cnnlab.create_model(MODEL, num_classes=2, image_size=SIZE)
    assert calls == [1]
    config = DetectionConfig(channels_last=False, precision="fp32", reuse_memory=False)
    assert prepare(plain, config) is None and calls == [1]
    assert conv(plain).is_contiguous() and not conv(plain).is_contiguous(
        memory_format=torch.channels_last
    )
    with pytest.raises(ValueError, match="precision"):
        DetectionConfig(precision="fp16")


@pytest.mark.slow
def test_layout_and_precision_may_change_on_resume(data: Path, tmp_path) -> None:
    out = tmp_path / "run"
    assert _train(data, out) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _train(data, out, "--epochs", "2", "--resume", "--no-channels-last",
                      "--precision", "bf16") == 0  # fmt: skip
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)


@pytest.mark.slow
def test_a_run_folder_is_not_overwritten_and_resume_keeps_settings(
    data: Path, run: Path, capsys
) -> None:
    before = (run / "last.safetensors").read_bytes()
    _one_error(capsys, _train(data, run), "already holds a run", "--resume")
    _one_error(capsys, _train(data, run, "--resume", "--lr", "0.5"), "lr 0.01 -> 0.5")
    assert (run / "last.safetensors").read_bytes() == before


@pytest.mark.slow
def test_init_from_copies_a_classifier_into_the_backbone(data: Path, tmp_path, capsys) -> None:
    classifier = cnnlab.create_model("mobilenet_v2", num_classes=10, in_chans=1)
    for p in classifier.parameters():
        torch.nn.init.normal_(p, std=0.01)
    cnnlab.save(classifier, tmp_path / "cls.safetensors")
    out = tmp_path / "run"
    code = _train(data, out, "--init-from", str(tmp_path / "cls.safetensors"), "--lr", "1e-20")
    assert code == 0
    assert "backbone initialised from" in capsys.readouterr().out
    weights, _ = read_weights(out / "last.safetensors")
    own = classifier.state_dict()
    copied = [k for k in own if f"features.backbone.graph_module.{k}" in weights]
    assert len(copied) > 100
    # lr 1e-20: the weights stay the classifier's (BN statistics do move); a random detector's
    # gradients reach 1e5-1e6, so 1e-12 moved them by 1e-6 on an AVX2 EPYC
    for k in copied:
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            got = weights[f"features.backbone.graph_module.{k}"]
            assert torch.allclose(got, own[k], atol=1e-6), k
    other = tmp_path / "other.safetensors"
    cnnlab.save(cnnlab.create_model("resnet18", num_classes=10, in_chans=1), other)
    _one_error(capsys, _train(data, tmp_path / "bad", "--init-from", str(other)), "resnet18")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_eval_reports_coco_map_per_class(data: Path, run: Path, capsys) -> None:
    code = main(["eval", MODEL, "--checkpoint", str(run), "--data", str(data), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["mAP"] <= result["mAP50"] <= 1
    assert result["images"] == 4 and result["boxes"] > 0
    assert len(result["per_class"]) == 10
    assert all(v["AP"] is None or 0 <= v["AP"] <= 1 for v in result["per_class"].values())


@pytest.mark.slow
def test_eval_channels_last_unless_told_scores_the_same(data: Path, run: Path, capsys) -> None:
    for layout, channels_last in ((torch.channels_last, True), (torch.contiguous_format, False)):
        model, _, _ = detect_evaluate.load_detector(MODEL, run, channels_last)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=layout)
    scores = []
    for flag in ([], ["--no-channels-last"]):
        args = ["eval", MODEL, "--checkpoint", str(run), "--data", str(data), "--json", *flag]
        assert main(args) == 0
        scores.append(json.loads(capsys.readouterr().out)["mAP"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-3)


def test_perfect_detections_score_one_and_shifted_ones_less(data: Path) -> None:
    """The map from the model's input pixels back to the image and COCO's scoring: the val
    ground truth, resized as the dataset resizes it and mapped back, scores mAP 1."""
    pre = Preprocess(size=64, in_chans=1, mean=(0.5,), std=(0.25,))
    ds = DetectionDataset(data, "val", pre)
    found = [{"boxes": ds[i][1]["boxes"], "labels": ds[i][1]["labels"] - 1,
              "scores": torch.ones(len(ds[i][1]["labels"]))} for i in range(len(ds))]  # fmt: skip
    sizes = [(w, h) for _, w, h, _, _ in ds.samples]
    rows = coco_results(found, ds.image_ids, sizes, ds.category_ids, pre.size)
    perfect = score_results(ds, rows)
    assert perfect["mAP"] == pytest.approx(1.0) and perfect["mAP50"] == pytest.approx(1.0)
    for r in rows:  # a third of each box's width off: IoU 0.5, under most thresholds
        r["bbox"][0] += r["bbox"][2] / 3
    shifted = score_results(ds, rows)
    assert shifted["mAP"] < 0.5 and shifted["mAP50"] <= 1.0


def test_missing_pycocotools_is_one_error_line(data: Path, monkeypatch, capsys) -> None:
    real = detect_evaluate.importlib.import_module

    def without_pycocotools(name: str):
        if name.startswith("pycocotools"):
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(detect_evaluate.importlib, "import_module", without_pycocotools)
    with pytest.raises(CnnlabError, match="pip install 'pycocotools"):
        detect_evaluate.require_pycocotools()
    code = main(["eval", MODEL, "--checkpoint", "nowhere", "--data", str(data)])
    _one_error(capsys, code, "pycocotools")


@pytest.mark.parametrize(
    ("option", "words"),
    [(("--top", "5"), ("--top does not apply",)), (("--score-thresh", "nan"), ("[0, 1]", "nan")),
     (("--score-thresh", "-0.1"), ("[0, 1]",))],
)  # fmt: skip
def test_predict_options_that_do_not_fit_a_detector(tmp_path, capsys, option, words) -> None:
    image = tmp_path / "x.png"
    code = main(["predict", MODEL, "--checkpoint", "nowhere", str(image), *option])
    _one_error(capsys, code, *words)


@pytest.mark.slow
def test_predict_json_and_draw(data: Path, run: Path, tmp_path, capsys) -> None:
    images = sorted(str(p) for p in (data / "val").glob("*.png"))[:2]
    out = tmp_path / "drawn.png"
    code = main(["predict", MODEL, "--checkpoint", str(run), *images, "--json",
                 "--score-thresh", "0", "--draw", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in result] == images
    classes = cnnlab.load(run, MODEL)[1]["class_names"]
    for r in result:
        assert r["detections"], "score threshold 0 keeps the best 200"
        for det in r["detections"]:
            assert set(det) == {"box", "label", "score"} and det["label"] in classes
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= SIZE and 0 <= y1 <= y2 <= SIZE
        scores = [d["score"] for d in r["detections"]]
        assert scores == sorted(scores, reverse=True)
    for image in images:
        drawn = tmp_path / f"drawn-{Path(image).stem}.png"
        with Image.open(drawn) as img, Image.open(image) as src:
            assert img.format == "PNG" and img.size == src.size and img.mode == "RGB"
            assert np.asarray(img)[..., 0].tolist() != np.asarray(src).tolist()  # boxes drawn


@pytest.mark.slow
def test_export_is_verified_with_raw_boxes_and_scores(run: Path, tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "ssd.onnx"
    code = main(["export", MODEL, "--checkpoint", str(run), "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_abs_diff"] < 1e-3 and result["input_shape"] == [1, 1, SIZE, SIZE]
    from cnnlab.deploy import onnxruntime_session

    session = onnxruntime_session(out)
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores"]
    model, _ = cnnlab.load(run, MODEL)
    x = torch.randn(1, 1, SIZE, SIZE)
    boxes, scores = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    want_boxes, want_scores = model.decode(*model(x))
    assert np.allclose(boxes, want_boxes.detach().numpy(), atol=1e-3)
    assert np.allclose(scores, want_scores.detach().numpy(), atol=1e-4)
    assert scores.shape == (1, model.anchors.shape[0], 10)


def test_bench_times_a_saved_detector_at_its_own_size(run: Path, capsys) -> None:
    argv = ["bench", MODEL, "--checkpoint", str(run), "--repeats", "1", "--warmup", "0",
            "--no-train"]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["img_size"] == SIZE and row["latency_ms"] > 0
    _one_error(capsys, main([*argv, "--vs", "torchvision", "--json"]), "RGB", "1 channel")


@pytest.mark.slow
def test_strict_refuses_a_bad_box_and_default_skips_it(data: Path, tmp_path, capsys) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    path = bad / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["bbox"] = [SIZE - 2, 0, 50, 10]  # outside its image
    path.write_text(json.dumps(doc))
    _one_error(capsys, _train(bad, tmp_path / "strict", "--strict"), "outside its")
    assert not (tmp_path / "strict").exists()
    with pytest.warns(UserWarning, match="skipped 1"):
        assert _train(bad, tmp_path / "lenient") == 0
    assert "skipped 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["train", MODEL, "--data", "fashion-mnist"], ("COCO-style folder",)),
        (["train", "lenet5", "--data", "{data}"], ("is a classifier",)),
        (["train", MODEL, "--data", "{data}", "--optimizer", "adamw"], ("--optimizer",)),
        (["train", MODEL, "--data", "{data}", "--device", "cuda"], ("CPU only",)),
        (["eval", MODEL, "--checkpoint", "x", "--data", "{data}", "--limit", "3"], ("--limit",)),
        (["predict", MODEL, "--checkpoint", "x", "{data}/val"], ("is a folder",)),
        (["predict", MODEL, "--checkpoint", "x", "{image}", "--draw", "o.jpg"], (".png",)),
        (["predict", MODEL, "--checkpoint", "nowhere", "{image}"], ("nowhere",)),
        (["predict", "lenet5", "--checkpoint", "x", "{image}", "--draw", "o.png"], ("--draw",)),
    ],
)
def test_bad_input_is_one_error_line(data: Path, capsys, argv: list[str], words) -> None:
    image = str(next((data / "val").glob("*.png")))
    argv = [a.format(data=data, image=image) for a in argv]
    _one_error(capsys, main(argv), *words)


def test_small_map_grads_reach_detector_training(data: Path, tmp_path: Path, monkeypatch) -> None:
    """``--small-map-grads on`` trains the detector inside the small-map hooks, ``off``
    outside; a bad value is refused by the config."""
    used = []

    def spy(model: torch.nn.Module, enabled: bool) -> object:
        used.extend([model] if enabled else [])
        return small_map_weight_grads(model, enabled)

    monkeypatch.setattr(detect_train, "small_map_weight_grads", spy)
    for setting in ("on", "off"):
        used.clear()
        assert _train(data, tmp_path / setting, "--small-map-grads", setting) == 0
        assert bool(used) == (setting == "on")
    with pytest.raises(ValueError, match="small_map_grads must be one of"):
        DetectionConfig(small_map_grads="yes")
