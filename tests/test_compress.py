"""Deep Compression: Huffman coding, pruning, weight sharing, the .cnz file, the CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from cnnlab import create_model
from cnnlab.cli import main
from cnnlab.codec import huffman
from cnnlab.compress import (
    CompressionConfig,
    decode_bytes,
    encode_state_dict,
    gradual_sparsity,
    kmeans_1d,
    layer_table,
    load,
    load_state_dict,
    masks_for_sparsity,
    model_bytes,
    pipeline,
    prune,
    read_header,
    save,
    sensitivity,
    share_weights,
)
from cnnlab.compress.pipeline import compress, finalize
from cnnlab.compress.prune import prunable_layers, quality_to_sparsity
from cnnlab.errors import CnnlabError
from cnnlab.saved import load_weights, save_weights
from cnnlab.train import train_one_epoch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class Tiny(nn.Module):
    """A conv + BN + two fc layers: every kind of tensor the format meets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 4)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _batches(n: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
        for _ in range(n)
    ]


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.numel() == 0 or torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    )


# --------------------------------------------------------------------------- Huffman


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=3000), st.integers(0, 3))
def test_huffman_round_trip(symbols: list[int], skew: int) -> None:
    s = np.array(symbols, dtype=np.int64) >> skew
    lengths = huffman.code_lengths(np.bincount(s, minlength=41))
    data, blocks = huffman.encode(s, lengths)
    assert np.array_equal(huffman.decode(data, lengths, len(s), blocks), s)
    if len(s):  # the Huffman bound: within one bit of the entropy per symbol
        p = np.bincount(s) / len(s)
        entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
        assert blocks.sum() / len(s) < entropy + 1 + 1e-9


def test_huffman_length_limit_and_kraft() -> None:
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman.code_lengths(np.array(fib))
    assert lengths.max() <= huffman.MAX_CODE_LENGTH
    assert (2.0 ** -lengths.astype(float)).sum() <= 1.0
    with pytest.raises(ValueError, match="Kraft"):
        huffman.canonical_codes(np.array([1, 1, 1]))


def test_huffman_multi_block_stream() -> None:
    rng = np.random.default_rng(0)
    s = np.minimum(rng.geometric(0.3, 5 * huffman.BLOCK_SYMBOLS + 17) - 1, 15)
    lengths = huffman.code_lengths(np.bincount(s, minlength=16))
    data, blocks = huffman.encode(s, lengths)
    assert len(blocks) == 6
    assert np.array_equal(huffman.decode(data, lengths, len(s), blocks), s)
    bad = blocks.copy()
    bad[0] += 1
    bad[1] -= 1
    with pytest.raises(ValueError):
        huffman.decode(data, lengths, len(s), bad)


# --------------------------------------------------------------------------- pruning


def test_quality_threshold_and_sparsity_masks() -> None:
    torch.manual_seed(0)
    model = Tiny()
    w = model.fc1.weight.detach()
    s = quality_to_sparsity(model, {"fc1": 1.0})["fc1"]
    assert s == pytest.approx(float((w.abs() < w.std()).float().mean()))
    masks = masks_for_sparsity(model, {"fc1": 0.75})
    assert masks["fc1"].float().mean() == pytest.approx(0.25, abs=1 / w.numel())
    # every kept weight is at least as large as every pruned one
    assert w[masks["fc1"]].abs().min() >= w[~masks["fc1"]].abs().max()


def test_masks_hold_exactly_through_training() -> None:
    torch.manual_seed(0)
    model = Tiny()
    prune(model, masks_for_sparsity(model, {"conv": 0.5, "fc1": 0.9, "fc2": 0.3}))
    masks = {n: m.weight.detach() == 0 for n, m in prunable_layers(model).items()}
    # momentum and weight decay must not revive a pruned weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for x, y in _batches(6):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, module in prunable_layers(model).items():
        assert torch.all(module.weight[masks[name]] == 0)
        assert module.weight[~masks[name]].ne(0).all()  # the kept weights are still there
    # the same under the training engineer's loop
    train_one_epoch(model, _batches(3, seed=1), torch.optim.Adam(model.parameters(), lr=0.05))
    for name, module in prunable_layers(model).items():
        assert torch.all(module.weight[masks[name]].view(torch.int32) == 0)  # +0.0, not -0.0


@pytest.mark.parametrize(
    "bad",
    [
        {"quality": 1.0, "sparsity": 0.5},
        {"recipe": "paper", "sparsity": 0.5},
        {"sparsity": 0.5, "lr": float("inf")},
        {"sparsity": 0.5, "weight_decay": -1.0},
        {"sparsity": 0.5, "conv_bits": 0},
        {"sparsity": 0.5, "optimizer": "adam"},
        {"sparsity": 0.5, "finetune_optimizer": "adam"},
        {"sparsity": 0.5, "schedule": "cubic"},
        {"sparsity": 0.5, "prune_steps": 0},
        {"sparsity": 0.5, "distill": 1.5},
        {"sparsity": 0.5, "distill": 0.5, "distill_temperature": 0},
    ],
)
def test_config_rejects_bad_settings(bad) -> None:
    with pytest.raises(ValueError):
        CompressionConfig(**bad)


@pytest.mark.parametrize(("finetune_optimizer", "expected"), [(None, "SGD"), ("adamw", "AdamW")])
def test_finetune_optimizer_defaults_to_the_retraining_one(
    monkeypatch, finetune_optimizer, expected
) -> None:
    built = []

    def recording(cls: type) -> type:
        class Recording(cls):
            def __init__(self, *args, **kwargs) -> None:
                built.append(cls.__name__)
                super().__init__(*args, **kwargs)

        return Recording

    monkeypatch.setattr(torch.optim, "SGD", recording(torch.optim.SGD))
    monkeypatch.setattr(torch.optim, "AdamW", recording(torch.optim.AdamW))
    torch.manual_seed(0)
    cfg = CompressionConfig(sparsity=0.5, finetune_optimizer=finetune_optimizer)
    compress(Tiny(), _batches(2), _batches(1, seed=1), cfg)
    assert built == ["SGD", expected]  # one prune/retrain round, then the centroids


@pytest.mark.parametrize(("stage", "options"), [
    ("retrain round 1/1 epoch 1/1", {"lr": 1e30}),
    ("fine-tune epoch 1/1", {"finetune_lr": 1e30}),
])  # fmt: skip
def test_a_nan_loss_in_retraining_names_the_stage_and_the_batch(stage, options) -> None:
    torch.manual_seed(0)
    cfg = CompressionConfig(sparsity=0.5, **options)
    with pytest.raises(CnnlabError, match=rf"^{stage}: loss is nan at batch 2 \(of 4\);") as e:
        compress(Tiny(), _batches(4), _batches(1, seed=1), cfg)
    assert "learning rate" in str(e.value)


def test_diverged_weights_stop_compression_before_anything_is_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every retraining loss finite, but the last step leaves non-finite weights: the stage's
    validation loss is NaN, and compress stops instead of storing a broken model."""
    real = pipeline.train_one_epoch

    def diverging(model, *args, **kw):
        stats = real(model, *args, **kw)
        with torch.no_grad():
            model.fc2.bias.fill_(float("inf"))
        return stats

    monkeypatch.setattr(pipeline, "train_one_epoch", diverging)
    torch.manual_seed(0)
    with pytest.raises(CnnlabError, match=r"^the pruned model's validation loss is nan"):
        compress(Tiny(), _batches(2), _batches(1, seed=1),
                 CompressionConfig(sparsity=0.5, finetune_epochs=0))  # fmt: skip


def test_gradual_schedule_is_cubic() -> None:
    ramp = gradual_sparsity(0.9, 4)
    assert ramp[-1] == pytest.approx(0.9)
    assert ramp == sorted(ramp)
    assert ramp[0] == pytest.approx(0.9 * (1 - 0.75**3))
    with pytest.raises(ValueError):
        gradual_sparsity(0.9, 0)


def test_sensitivity_restores_weights() -> None:
    torch.manual_seed(0)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def score(m: nn.Module) -> float:
        seen.append(float((m.fc1.weight == 0).float().mean()))
        return seen[-1]

    curves = sensitivity(model, score, [0.0, 0.5, 0.9], layers=["fc1"])
    assert [f for f, _ in curves["fc1"]] == [0.0, 0.5, 0.9]
    assert seen == pytest.approx([0.0, 0.5, 0.9], abs=0.01)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="unknown layer"):
        sensitivity(model, score, [0.5], layers=["nope"])


# --------------------------------------------------------------------------- quantization


def test_kmeans_linear_init_finds_clusters() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 200) for c in (-1.0, 0.2, 1.5)])
    centroids, assign = kmeans_1d(values, 3, init="linear")
    assert np.allclose(np.sort(centroids), [-1.0, 0.2, 1.5], atol=0.01)
    assert np.array_equal(np.abs(values[:, None] - centroids).argmin(1), assign)
    for init in ("density", "random"):
        c, a = kmeans_1d(values, 4, init=init)
        assert len(c) == 4 and a.max() < 4
    with pytest.raises(ValueError, match="init"):
        kmeans_1d(values, 3, init="nope")


def test_shared_weights_centroid_gradient_is_sum_of_members() -> None:
    torch.manual_seed(0)
    model = Tiny()
    prune(model, masks_for_sparsity(model, {"fc1": 0.8}))
    share_weights(model, conv_bits=3, fc_bits=2)
    shared = model.fc1.parametrizations.weight
    idx, mask = shared[0].assignment, shared[0].mask
    assert len(torch.unique(model.fc1.weight[mask])) <= 4
    assert torch.all(model.fc1.weight[~mask] == 0)
    # gradient of each centroid = sum of its members' gradients (Deep Compression, fig. 3)
    x, y = _batches(1)[0]
    with parametrize.cached():  # one weight tensor for the forward pass, to read its grad
        weight = model.fc1.weight
        weight.retain_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    expected = torch.zeros(4).index_add_(0, idx[mask], weight.grad[mask])
    assert torch.allclose(shared.original.grad, expected, atol=1e-6)
    # fine-tuning keeps the assignments: still <= 4 values, zeros still zero
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    before = model.fc1.weight.detach().clone()
    for xb, yb in _batches(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    after = model.fc1.weight.detach()
    assert not torch.equal(before, after)
    assert torch.all(after[~mask] == 0)
    for k in range(4):  # members of one cluster move together
        assert len(torch.unique(after[mask & (idx == k)])) <= 1


# --------------------------------------------------------------------------- file format


def _compressed_tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    model = Tiny()
    prune(model, masks_for_sparsity(model, {"conv": 0.3, "fc1": 0.9, "fc2": 0.5}))
    share_weights(model)
    model.bn.running_mean.uniform_(-1, 1)
    return finalize(model)


def test_state_dict_round_trip_is_bit_identical(tmp_path) -> None:
    model = _compressed_tiny()
    report = save(model, tmp_path / "tiny.cnz")
    state = load_state_dict(tmp_path / "tiny.cnz")
    assert list(state) == list(model.state_dict())
    assert all(_bits_equal(state[k], v) for k, v in model.state_dict().items())
    assert report.size == (tmp_path / "tiny.cnz").stat().st_size
    assert report.size == report.header_bytes + sum(t.bytes for t in report.tensors)
    enc = {t.name: t.encoding for t in report.tensors}
    assert enc["fc1.weight"] == "shared" and enc["fc1.bias"] == "half"
    assert enc["bn.num_batches_tracked"] == "raw"
    with pytest.raises(CnnlabError, match="does not say which model"):
        load(tmp_path / "tiny.cnz")


def test_odd_tensors_round_trip() -> None:
    state = {
        "neg_zero": torch.tensor([[-0.0, 0.0], [1.0, float("nan")]]),
        "empty": torch.zeros(0, 3),
        "zeros": torch.zeros(5, 5),
        "scalar": torch.tensor(3.5),
        "bf16": torch.randn(4).bfloat16(),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "i64": torch.arange(7),
        "bool": torch.tensor([True, False]),
        "wide_gap": torch.zeros(1, 1000).index_fill_(1, torch.tensor([0, 999]), 0.5),
    }
    _, out = decode_bytes(encode_state_dict(state, index_bits={"wide_gap": 2})[0])
    assert all(_bits_equal(out[k], v) for k, v in state.items())


def test_relative_indices_use_fillers() -> None:
    w = torch.zeros(1, 100)
    w[0, [0, 40, 99]] = 1.0
    report = encode_state_dict({"w": w}, index_bits={"w": 3})[1].tensors[0]
    # gaps 0, 39, 58 with 7 per filler: 0 + 5 + 8 fillers, plus the three weights
    assert report.encoding == "shared" and report.index_entries == 3 + 5 + 8


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_centroid_steps_script_measures_every_shared_layer() -> None:
    torch.manual_seed(0)
    model = Tiny()
    prune(model, masks_for_sparsity(model, {"conv": 0.5, "fc1": 0.5, "fc2": 0.5}))
    share_weights(model, conv_bits=2, fc_bits=2)
    kept = {n: int((m.weight != 0).sum()) for n, m in prunable_layers(model).items()}
    x, y = _batches(1)[0]
    steps = _benchmark("centroid_steps").centroid_steps
    rows, doubled = steps(model, x, y, lr=1e-3), steps(model, x, y, lr=2e-3)
    assert [name for name, _, _ in rows] == list(kept)
    for (name, members, ratio), (_, _, ratio2) in zip(rows, doubled, strict=True):
        assert members == pytest.approx(kept[name] / 4)  # 2 bits: four centroids per layer
        assert ratio > 0 and ratio2 == pytest.approx(2 * ratio)  # gradients not accumulated


def test_registry_model_compresses_and_loads_back(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = create_model("lenet_300_100", num_classes=10, in_chans=1)
    size_before = model_bytes(model)
    prune(model, masks_for_sparsity(model, {"hidden.fc1": 0.92, "hidden.fc2": 0.91, "fc": 0.74}))
    share_weights(model, fc_bits=6)
    finalize(model)
    report = save(model, tmp_path / "m.cnz")
    table = layer_table(report, model, size_before)
    assert table["total"]["size_after"] == report.size
    assert table["total"]["ratio"] > 25  # random weights: the paper's 40x needs training
    loaded = load(tmp_path / "m.cnz")
    assert loaded.model_name == "lenet_300_100" and not loaded.training
    assert all(_bits_equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    # benchmarks/coding_headroom.py re-encodes the file to the byte and bounds each stream
    _benchmark("coding_headroom").headroom(str(tmp_path / "m.cnz"))
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if ".weight" in line]
    assert [r[0] for r in rows] == ["hidden.fc1.weight", "hidden.fc2.weight", "fc.weight"]
    for _, _, _, huff_w, h0_w, _, huff_p, h0_p, *_ in rows:
        assert float(h0_w) <= float(huff_w) < float(h0_w) + 1  # Huffman: within 1 bit of H0
        assert float(h0_p) <= float(huff_p) < float(h0_p) + 1


# --------------------------------------------------------------------------- bad files


def _small_file() -> bytes:
    return encode_state_dict(_compressed_tiny().state_dict(), header={"model": None})[0]


def test_every_truncation_and_bit_flip_is_one_clear_error(tmp_path) -> None:
    data = _small_file()
    path = tmp_path / "bad.cnz"
    for cut in [0, 1, 8, 9, 12, 20, len(data) // 2, len(data) - 5, len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(CnnlabError, match=r"not a valid \.cnz file"):
            load_state_dict(path)
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(data), 60, replace=False):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(bad))
        with pytest.raises(CnnlabError):
            load_state_dict(path)


def test_wrong_version_foreign_and_missing_files(tmp_path) -> None:
    data = bytearray(_small_file())
    data[8] = 2
    (tmp_path / "v2.cnz").write_bytes(bytes(data))
    with pytest.raises(CnnlabError, match="version 2"):
        load_state_dict(tmp_path / "v2.cnz")
    sd = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2)}, str(sd))
    with pytest.raises(CnnlabError, match=r"not a \.cnz file"):
        load(sd)
    with pytest.raises(CnnlabError, match="does not exist"):
        load(tmp_path / "missing.cnz")


# --------------------------------------------------------------------------- CLI


def test_cli_decompress_and_errors(tmp_path, capsys) -> None:
    model = _compressed_tiny()
    save(model, tmp_path / "t.cnz")
    assert (
        main(["decompress", str(tmp_path / "t.cnz"), "--out", str(tmp_path / "t.safetensors")]) == 0
    )
    plain = load_file(str(tmp_path / "t.safetensors"))
    assert all(_bits_equal(plain[k], v) for k, v in model.state_dict().items())
    (tmp_path / "junk.cnz").write_bytes(b"hello world")
    capsys.readouterr()
    assert (
        main(["decompress", str(tmp_path / "junk.cnz"), "--out", str(tmp_path / "j.safetensors")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cnnlab: error:")
    assert not (tmp_path / "j.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, distill", [("sgd", "0"), ("adamw", "0.5")])
def test_cli_compress_end_to_end(tmp_path, capsys, optimizer, distill) -> None:
    torch.manual_seed(0)
    model = create_model("lenet_300_100", num_classes=10, in_chans=3)
    ckpt = tmp_path / "w.safetensors"
    pre = {"size": 28, "in_chans": 3, "mean": [0.5], "std": [0.25]}
    save_weights(model, ckpt, meta={"preprocess": pre})
    out = tmp_path / "m.cnz"
    args = [
        "compress",
        "lenet_300_100",
        "--checkpoint",
        str(ckpt),
        "--data",
        "synthetic",
        "--limit",
        "256",
        "--batch-size",
        "64",
        "--quality",
        "1.0",
        "--quality",
        "fc=0.5",
        "--retrain-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--optimizer",
        optimizer,
        "--distill",
        distill,
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "hidden.fc1" in text and "stored" in text and "x)" in text
    loaded = load(out)
    assert loaded.model_name == "lenet_300_100"
    assert read_header(out)["extra"]["img_size"] == 28  # what `cnnlab eval --compressed` uses
    w = loaded.hidden.fc1.weight
    assert 0.54 < float((w == 0).float().mean()) < 0.62  # uniform init: P(|w| < std) = 0.577
    assert len(torch.unique(w)) <= 33  # 5 fc bits + zero
    assert main([*args[:-2], "--out", str(tmp_path / "x.cnz"), "--quality", "nomatch=1"]) == 2
    bad = tmp_path / "bad.safetensors"
    save_weights(model, bad, meta={"preprocess": {"size": 28}})
    assert main([*args[:3], str(bad), *args[4:-2], "--out", str(tmp_path / "y.cnz")]) == 2
    assert "malformed preprocessing" in capsys.readouterr().err
    # decompress gives a checkpoint the training tools read back
    assert main(["decompress", str(out), "--out", str(tmp_path / "d.safetensors")]) == 0
    again = create_model("lenet_300_100", num_classes=10, in_chans=3)
    load_weights(again, tmp_path / "d.safetensors")
    assert all(_bits_equal(again.state_dict()[k], v) for k, v in loaded.state_dict().items())


def test_cli_sensitivity_prints_and_plots(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "w.safetensors"
    save_weights(create_model("lenet_300_100", num_classes=10, in_chans=3), ckpt)
    common = ["lenet_300_100", "--checkpoint", str(ckpt), "--data", "synthetic", "--limit", "64"]
    plot = tmp_path / "sens.png"
    args = [*common, "--fractions", "0,0.9", "--layers", "hidden.fc1,fc", "--plot", str(plot)]
    assert main(["compress", "sensitivity", *args]) == 0
    text = capsys.readouterr().out
    assert "hidden.fc1" in text and "\nfc " in text and "90%" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sensitivity", *common, "--layers", "nope"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("cnnlab: error: unknown layer")
    assert main(["sensitivity", *common, "--plot", str(tmp_path / "no" / "s.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
