"""Issue 14, the commands' part: one error line (and JSON) for every failure, checks before any
work, --device everywhere that computes, progress lines, --help/--version, rows that add up."""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import pathlib

import pytest
import torch

import cnnlab
from cnnlab.cli import build_parser, main
from cnnlab.saved import save as save_checkpoint

PRE = {"size": 28, "in_chans": 3, "mean": [0.5], "std": [0.25]}
NO_WORK = ["--retrain-epochs", "0", "--finetune-epochs", "0", "--quality", "1"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: "), err
    return lines[0]


@pytest.fixture
def ckpt(tmp_path) -> pathlib.Path:
    path = tmp_path / "w.safetensors"
    model = cnnlab.create_model("lenet_300_100", num_classes=10, in_chans=3)
    save_checkpoint(model, path, class_names=[str(i) for i in range(10)], preprocess=PRE)
    return path


def compress_args(ckpt: pathlib.Path, out: pathlib.Path, *extra: str) -> list[str]:
    return [
        "compress", "lenet_300_100", "--checkpoint", str(ckpt), "--data", "synthetic",
        "--limit", "64", "--batch-size", "32", *extra, "--out", str(out),
    ]  # fmt: skip


@pytest.fixture
def no_baseline(monkeypatch):
    """Fail the test if the compression pipeline starts (the baseline evaluation)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline ran before the arguments were checked")

    monkeypatch.setattr("cnnlab.cli.compression.compress", refuse)


# --------------------------------------------------------------- item 10: a full disk


def _full_disk(monkeypatch) -> None:
    def write_bytes(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def test_full_disk_in_compress_is_one_line(tmp_path, ckpt, capsys, monkeypatch) -> None:
    _full_disk(monkeypatch)
    out = tmp_path / "m.cnz"
    code, _, err = run(capsys, *compress_args(ckpt, out, *NO_WORK))
    assert code == 2
    assert one_error_line(err) == f"cnnlab: error: No space left on device: {out}"
    assert list(tmp_path.iterdir()) == [ckpt]  # no temporary file left


def test_full_disk_in_decompress_is_one_line(tmp_path, ckpt, capsys, monkeypatch) -> None:
    cnz = tmp_path / "m.cnz"
    assert main(compress_args(ckpt, cnz, *NO_WORK, "--json")) == 0
    capsys.readouterr()
    _full_disk(monkeypatch)
    out = tmp_path / "d.safetensors"
    code, _, err = run(capsys, "decompress", str(cnz), "--out", str(out))
    assert code == 2 and "No space left on device" in one_error_line(err)
    assert not out.exists()


def test_full_disk_in_a_plot_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    from matplotlib.figure import Figure

    def savefig(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    plot = tmp_path / "c.png"
    code, _, err = run(capsys, "compare", "lenet5", "--plot", str(plot))
    assert code == 2 and one_error_line(err).endswith(f"No space left on device: {plot}")
    monkeypatch.setattr(Figure, "savefig", lambda *a, **k: (_ for _ in ()).throw(OSError(30, "")))
    code, _, err = run(capsys, "compare", "lenet5", "--plot", str(plot))
    assert code == 2 and one_error_line(err)  # a read-only file system too


def test_an_unexplained_os_error_keeps_its_traceback(monkeypatch) -> None:
    def broken(args):
        raise OSError(errno.EIO, "Input/output error")  # no file named, not the disk's space

    parser = build_parser()
    args = parser.parse_args(["models"])
    args.func = broken
    monkeypatch.setattr("cnnlab.cli.build_parser", lambda: _Fixed(parser, args))
    with pytest.raises(OSError):
        main(["models"])


def test_cnnlabs_own_warnings_show_as_one_line(monkeypatch, capsys) -> None:
    import sys
    import warnings

    import cnnlab.devices

    def warns(args):
        warnings.warn_explicit("bf16 is emulated here", UserWarning, cnnlab.devices.__file__, 1)
        warnings.warn_explicit("a foreign one", UserWarning, "/elsewhere/lib.py", 7)
        return 0

    parser = build_parser()
    args = parser.parse_args(["models"])
    args.func = warns
    monkeypatch.setattr("cnnlab.cli.build_parser", lambda: _Fixed(parser, args))

    def show(message, category, filename, lineno, file=None, line=None):  # Python's default
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)  # pytest's records them instead
    before = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["models"]) == 0
    err = capsys.readouterr().err
    assert "cnnlab: warning: bf16 is emulated here\n" in err
    assert "/elsewhere/lib.py:7: UserWarning: a foreign one" in err
    assert warnings.formatwarning is before


class _Fixed:
    def __init__(self, parser, args) -> None:
        self._parser, self._args = parser, args
        self._actions = parser._actions

    def parse_args(self, argv):
        return self._args

    def error(self, message):
        self._parser.error(message)


# --------------------------------------------------------- item 10: --out below a file


@pytest.mark.parametrize("command", ["compress", "decompress", "export"])
def test_out_below_a_file_is_refused_first(tmp_path, ckpt, capsys, command, no_baseline) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    if command == "compress":
        argv = compress_args(ckpt, afile / "m.cnz", *NO_WORK)
    elif command == "decompress":
        argv = ["decompress", str(tmp_path / "missing.cnz"), "--out", str(afile / "d.safetensors")]
    else:
        argv = ["export", "lenet5", "--out", str(afile / "sub" / "m.onnx")]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert f"{str(afile)!r} is a file, not a folder" in one_error_line(err)


def test_out_that_is_a_folder_is_refused(tmp_path, ckpt, capsys, no_baseline) -> None:
    code, _, err = run(capsys, *compress_args(ckpt, tmp_path, *NO_WORK))
    assert code == 2 and "is a folder, not a file name" in one_error_line(err)


@pytest.mark.parametrize("name", ["m.safetensors", "m.pth", "m"])
def test_compress_out_must_be_a_cnz(tmp_path, ckpt, capsys, no_baseline, name) -> None:
    """A .cnz under another suffix would be taken for safetensors or pickle by other tools."""
    code, out, err = run(capsys, *compress_args(ckpt, tmp_path / name, *NO_WORK))
    assert code == 2 and out == "" and not (tmp_path / name).exists()
    assert one_error_line(err).startswith("cnnlab: error: --out must end in .cnz, got ")


@pytest.mark.parametrize("name", ["m.onnx.tmp", "-1", "m.safetensors"])
def test_export_out_must_be_an_onnx(tmp_path, capsys, name) -> None:
    code, out, err = run(capsys, "export", "lenet5", "--out", str(tmp_path / name))
    assert code == 2 and out == "" and not (tmp_path / name).exists()
    assert one_error_line(err).startswith("cnnlab: error: --out must end in .onnx, got ")


# -------------------------------------------------------------- item 10: bench memory


@pytest.mark.parametrize(
    "argv",
    [["--batch-size", "100000000"], ["--img-size", "100000"], ["--batch-size", "1,10000000"]],
)
def test_bench_refuses_what_memory_cannot_hold(capsys, monkeypatch, argv) -> None:
    def no_alloc(*args, **kwargs):
        raise AssertionError("allocated before the memory check")

    monkeypatch.setattr("cnnlab.deploy.bench._race", no_alloc)
    code, _, err = run(capsys, "bench", "resnet18", "--no-train", *argv)
    line = one_error_line(err)
    assert code == 2 and "GiB, but" in line and "use a smaller --batch-size or --img-size" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["gradients", "resnet18", "--input", "3x100000x100000"],
        ["gradients", "resnet18", "--batch-size", "100000", "--data", "synthetic"],
        ["summary", "resnet18", "--measure-memory", "--input", "3x100000x100000"],
        ["summary", "resnet18", "--measure-memory", "--batch-size", "100000"],
    ],
    ids=lambda a: " ".join(a[2:]),
)
def test_training_steps_memory_cannot_hold_are_refused(capsys, monkeypatch, argv) -> None:
    def no_alloc(*args, **kwargs):
        raise AssertionError("allocated before the memory check")

    monkeypatch.setattr("cnnlab.cli.analysis.batches_for", no_alloc)
    profile_module = importlib.import_module("cnnlab.analysis.profile")  # the function shadows it
    monkeypatch.setattr(profile_module, "_live_peak", no_alloc)
    code, _, err = run(capsys, *argv, "--device", "cpu")
    line = one_error_line(err)
    assert code == 2 and "GiB, but" in line and "use a smaller --batch-size or --input" in line


@pytest.mark.parametrize(
    "argv", [["--input", "3x3000000000x3000000000"], ["--batch-size", str(10**23)]]
)
def test_summary_of_more_values_than_a_tensor_holds_is_one_line(capsys, argv) -> None:
    code, _, err = run(capsys, "summary", "resnet18", *argv)
    assert code == 2 and "profiles stop at 2**53" in one_error_line(err)


def test_compare_refuses_a_throughput_batch_memory_cannot_hold(capsys, monkeypatch) -> None:
    randn = torch.randn

    def small_randn(*size, **kwargs):
        dims = size[0] if isinstance(size[0], tuple) else size
        assert dims[0] < 10**6, "allocated before the memory check"
        return randn(*size, **kwargs)

    monkeypatch.setattr(torch, "randn", small_randn)
    argv = ["compare", "lenet5", "--measure-latency", "--batch-size", str(10**9)]
    code, _, err = run(capsys, *argv)
    line = one_error_line(err)
    assert code == 2 and "a forward pass of lenet5 at batch 1000000000" in line
    assert line.endswith("use a smaller --batch-size")


def test_memory_needed_follows_the_profile() -> None:
    from cnnlab.analysis import profile
    from cnnlab.deploy.bench import memory_needed

    with torch.device("meta"):
        model = cnnlab.create_model("resnet18")
    prof = profile(model, (3, 224, 224), 4)
    assert memory_needed(model, (3, 224, 224), 4, train=False) >= prof.forward_bytes
    assert memory_needed(model, (3, 224, 224), 4, train=True) >= prof.training_bytes["adam"] / 2


# ------------------------------------------------------------------ item 10/16: --device


DEVICE_COMMANDS = {
    "gradients": ["gradients", "lenet5"],
    "summary": ["summary", "lenet5", "--measure-memory"],
    "bench": ["bench", "lenet5", "--no-train"],
}


@pytest.mark.parametrize("name", [*DEVICE_COMMANDS, "compress", "sensitivity"])
@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_device_without_the_hardware_is_one_line(
    tmp_path, ckpt, capsys, monkeypatch, name, device, no_baseline
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if name == "compress":
        argv = compress_args(ckpt, tmp_path / "m.cnz", *NO_WORK)
    elif name == "sensitivity":
        argv = ["sensitivity", *compress_args(ckpt, tmp_path / "x", "--limit", "8")[1:-2]]
    else:
        argv = DEVICE_COMMANDS[name]
    code, out, err = run(capsys, *argv, "--device", device)
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert ("no CUDA GPU" in line) if device == "cuda" else ("'tpu'" in line)


def test_gradients_refuses_a_huge_seed(capsys) -> None:
    code, _, err = run(capsys, "gradients", "lenet5", "--seed", str(2**70))
    assert code == 2 and "--seed must be an integer in [0, 2**63 - 1]" in one_error_line(err)


def test_summary_measures_memory_on_the_given_device(capsys) -> None:
    code, out, _ = run(capsys, "summary", "lenet5", "--measure-memory", "--device", "cpu")
    assert code == 0 and "measured forward" in out


# ------------------------------------------------------------- item 11: compress checks


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bits", "nosuchlayer=4"], "bits given for unknown layers ['nosuchlayer']"),
        (["--bits", "fc=40"], "bits must be in 1..16"),
        (["--sparsity", "nosuch=0.5"], "sparsity pattern 'nosuch' matches no layer"),
        (["--sparsity", "1.5"], "sparsity must be [0, 1)"),
        (["--quality", "fc=-1"], "quality must be >= 0"),
        (["--recipe", "paper"], "no per-layer table for"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--seed", str(2**70)], "--seed must be an integer in [0, 2**63 - 1]"),
        (["--img-size", str(10**14)], "--img-size must be an integer in 1..4096"),  # a traceback
        (["--distill", "0.5", "--distill-temperature", "inf"], "at most 3.4e38"),  # was a NaN
    ],
)
def test_compress_checks_every_argument_before_the_baseline(
    tmp_path, ckpt, capsys, monkeypatch, extra, message
) -> None:
    from cnnlab.compress import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("evaluated before the arguments were checked")

    monkeypatch.setattr(pipeline, "evaluate", refuse)
    argv = compress_args(ckpt, tmp_path / "m.cnz", "--retrain-epochs", "0", *extra)
    if extra[0] == "--recipe":
        argv = compress_args(ckpt, tmp_path / "m.cnz", *extra)
        argv[1] = "lenet5"
        argv[3] = str(_lenet5(tmp_path))
    code, out, err = run(capsys, *argv)
    assert code == 2 and "baseline" not in out
    assert message in one_error_line(err)
    assert not (tmp_path / "m.cnz").exists()


def _lenet5(tmp_path) -> pathlib.Path:
    path = tmp_path / "l5.safetensors"
    pre = {**PRE, "size": 32, "in_chans": 1}
    model = cnnlab.create_model("lenet5", num_classes=10)
    save_checkpoint(model, path, class_names=[str(i) for i in range(10)], preprocess=pre)
    return path


def test_compress_checks_out_before_loading(tmp_path, ckpt, capsys, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("loaded the data before checking --out")

    monkeypatch.setattr("cnnlab.cli.compression.model_and_loaders", refuse)
    code, _, err = run(capsys, *compress_args(ckpt, tmp_path / "no" / "m.cnz", *NO_WORK))
    assert code == 2 and "does not exist" in one_error_line(err)


# ------------------------------------------------------------------- item 14: --json


JSON_ERRORS = [
    ["models", "nothing-like-this*"],
    ["summary", "nosuchnet"],
    ["compare", "nothing*"],
    ["gradients", "nosuchnet"],
    ["train", "lenet5", "--epochs", "0"],
    ["eval", "lenet5", "--checkpoint", "/no/such/run"],
    ["predict", "lenet5", "--checkpoint", "/no/such/run", "x.png"],
    ["compress", "lenet5", "--checkpoint", "/no/such", "--data", "synthetic", "--out", "/no/x"],
    ["sensitivity", "lenet5", "--checkpoint", "/no/such", "--data", "synthetic"],
    ["decompress", "/no/such.cnz", "--out", "x.safetensors"],
    ["export", "nosuchnet", "--out", "x.onnx"],
    ["bench", "nosuchnet"],
]


@pytest.mark.parametrize("argv", JSON_ERRORS, ids=lambda a: a[0])
def test_json_error_on_stdout_and_one_line_on_stderr(tmp_path, capsys, monkeypatch, argv) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv, "--json")
    line = one_error_line(err)
    assert code == 2
    assert json.loads(out) == {"error": line.removeprefix("cnnlab: error: "), "code": 2}


def test_every_command_with_json_is_covered() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    with_json = {
        name
        for name, p in sub.choices.items()
        if any("--json" in a.option_strings for a in p._actions)
    }
    assert with_json == {argv[0] for argv in JSON_ERRORS}


def test_usage_error_with_json_is_json_too(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["summary", "lenet5", "--depth", "x", "--json"])
    out = capsys.readouterr().out
    assert exc.value.code == 2 and json.loads(out)["code"] == 2
    assert "--depth" in json.loads(out)["error"]


# --------------------------------------------------------------- item 17: progress lines


def test_sensitivity_prints_one_progress_line_per_evaluation(ckpt, capsys) -> None:
    argv = ["sensitivity", "lenet_300_100", "--checkpoint", str(ckpt), "--data", "synthetic"]
    code, out, err = run(capsys, *argv, "--limit", "32", "--fractions", "0,0.5", "--json")
    assert code == 0 and json.loads(out)["curves"]
    lines = [x for x in err.splitlines() if x.startswith("cnnlab: sensitivity [")]
    assert len(lines) == 6 and lines[-1].startswith("cnnlab: sensitivity [6/6] fc 50% pruned")
    assert "\r" not in err


def test_compress_retraining_prints_one_line_per_epoch(tmp_path, ckpt, capsys) -> None:
    extra = ["--retrain-epochs", "2", "--prune-steps", "2", "--finetune-epochs", "1"]
    code, _, err = run(capsys, *compress_args(ckpt, tmp_path / "m.cnz", *extra, "--quality", "1"))
    assert code == 0 and "\r" not in err
    lines = [x for x in err.splitlines() if x.startswith("cnnlab: compress [")]
    assert [x.split("]")[0] for x in lines] == [f"cnnlab: compress [{i}/5" for i in range(1, 6)]
    assert "retrain round 2/2 epoch 2/2: loss" in lines[3] and "fine-tune epoch 1/1" in lines[4]


# ------------------------------------------------------- item 18: help, version, typos


def test_help_shows_every_default() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            shown = action.default not in (None, False, argparse.SUPPRESS)
            if action.option_strings and shown and isinstance(action.default, int | float | str):
                flag = action.option_strings[-1]
                part = text.split(flag, 2)[-1][:400]  # the option's line in the list
                if "default" not in part.split(" --")[0].lower():
                    missing.append(f"{name} {flag}")
    assert not missing


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"cnnlab {cnnlab.__version__}"


def test_command_typo_gets_a_suggestion(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sumary", "lenet5"])
    assert exc.value.code == 2
    assert "did you mean summary?" in capsys.readouterr().err


def test_decompress_json_and_export_csv(tmp_path, ckpt, capsys) -> None:
    cnz = tmp_path / "m.cnz"
    assert main(compress_args(ckpt, cnz, *NO_WORK, "--json")) == 0
    capsys.readouterr()
    out = tmp_path / "d.safetensors"
    code, text, _ = run(capsys, "decompress", str(cnz), "--out", str(out), "--json")
    report = json.loads(text)
    assert code == 0 and report["model"] == "lenet_300_100" and report["tensors"] == 6
    assert report["values"] == 737_010 and report["out"] == str(out)
    pytest.importorskip("onnxruntime")
    code, text, _ = run(capsys, "export", "lenet5", "--out", str(tmp_path / "l.onnx"), "--csv")
    header, row = text.strip().splitlines()
    assert code == 0 and header.startswith("path,") and "1x1x32x32" in row


# ---------------------------------------------------------- item 19: rows that add up


@pytest.mark.parametrize(
    "name",
    ["googlenet", "googlenet_tv", "bn_inception", "resnet18", "mobilenet_v2", "efficientnet_b0"],
)
def test_depth_one_rows_add_up_to_the_total(name, capsys) -> None:
    code, out, _ = run(capsys, "summary", name, "--json")
    data = json.loads(out)
    top = [r for r in data["layers"] if r["depth"] == 1]
    assert code == 0 and sum(r["params"] for r in top) == data["params"]


def test_googlenet_inception_modules_and_aux_heads_are_listed(capsys) -> None:
    code, out, _ = run(capsys, "summary", "googlenet", "--depth", "2")
    lines = out.splitlines()
    at = {line.split()[0]: line for line in lines if "(" in line}
    assert code == 0 and at["blocks"].startswith("blocks (ModuleDict)")
    assert at["inception3a"].startswith("  inception3a")  # under blocks, not under stem
    assert at["aux1"].startswith("aux1 (InceptionAux, not run)") and "not run:" in out
    code, out, _ = run(capsys, "summary", "googlenet", "--depth", "1")
    assert "3,188,840" in next(line for line in out.splitlines() if line.startswith("aux1 "))


def test_compare_latency_reports_a_spread(capsys, monkeypatch) -> None:
    from cnnlab.analysis import compare
    from cnnlab.timing import Timing

    spread_out = Timing({"forward": [0.001] * 4 + [0.1] * 3}, repeats=7, rounds=7)
    monkeypatch.setattr(compare, "latency_timing", lambda *a, **k: spread_out)
    code, out, _ = run(capsys, "compare", "lenet5", "--measure-latency", "--json")
    (row,) = json.loads(out)
    assert code == 0 and row["latency_ms"] == pytest.approx(1.0)
    assert row["latency_max_ms"] == pytest.approx(100) and row["latency_unstable"] is True
    busy = Timing({"forward": [0.001] * 7}, repeats=7, rounds=21, other_cores=1.0)
    monkeypatch.setattr(compare, "latency_timing", lambda *a, **k: busy)
    (row,) = json.loads(run(capsys, "compare", "lenet5", "--measure-latency", "--json")[1])
    assert row["latency_unstable"] is True and row["latency_rounds_run"] == 21
    code, out, _ = run(capsys, "compare", "lenet5", "--measure-latency")
    assert "±IQR" in out and " !" in out and "spread above 25% of the median (lenet5)" in out


def test_bench_prints_the_training_figure_once(capsys, monkeypatch) -> None:
    from cnnlab.deploy import bench

    def result(backend: str) -> bench.BenchResult:
        return bench.BenchResult(
            model="lenet5", backend=backend, batch_size=1, img_size=32, threads=1,
            latency_ms=1.0, latency_iqr_ms=0.1, images_per_s=1000.0, macs=1, gflops=1.0,
            matmul_peak_gflops=10.0, peak_fraction=0.1, train_images_per_s=123.4,
        )  # fmt: skip

    fake = lambda *a, **k: [result("eager"), result("fused"), result("compile")]  # noqa: E731
    monkeypatch.setattr("cnnlab.cli.deployment.benchmark", fake)
    code, out, _ = run(capsys, "bench", "lenet5", "--backend", "eager,fused,compile")
    assert code == 0 and out.count("123.4") == 1


def test_ctrl_c_while_the_commands_load_is_one_line(capsys, monkeypatch) -> None:
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr("cnnlab.cli.build_parser", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "cnnlab: interrupted\n"


# ------------------------------------------------------------ --data against the file


def _two_class_folder(root: pathlib.Path) -> pathlib.Path:
    from PIL import Image

    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (28, 28), (200, 10, 10)).save(root / split / name / "0.png")
    return root


@pytest.mark.parametrize("names, ok", [(["dog", "cat"], False), (["x", "y"], True)])
def test_eval_refuses_data_that_numbers_the_classes_differently(
    tmp_path, capsys, names, ok
) -> None:
    data = _two_class_folder(tmp_path / "data")
    path = tmp_path / "w.safetensors"
    model = cnnlab.create_model("lenet_300_100", num_classes=2, in_chans=3)
    save_checkpoint(model, path, class_names=names, preprocess=PRE)
    argv = ["eval", "lenet_300_100", "--checkpoint", str(path), "--data", str(data), "--json"]
    code, out, err = run(capsys, *argv)
    if ok:  # names the data does not use at all: matched by index
        assert code == 0 and json.loads(out)["images"] == 2
        return
    assert code == 2 and "'cat' is class 1 in the file but 0 in the data" in one_error_line(err)


@pytest.mark.parametrize("command", ["train", "summary"])
@pytest.mark.parametrize("keyword", ["in_chans=1", "features_only=True"])
def test_model_kwargs_that_the_command_sets_are_one_line(tmp_path, capsys, command, keyword):
    argv = [command, "lenet5", "--model-kwargs", keyword]
    if command == "train":
        argv += ["--data", "synthetic", "--out", str(tmp_path / "run")]
    code, out, err = run(capsys, *argv, "--json")
    line = one_error_line(err)
    assert code == 2 and json.loads(out)["code"] == 2
    assert "own keywords" in line and keyword.split("=")[0] in line.split("not ")[-1]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "lenet5", "--data", "synthetic", "--lr", "1e39"],
        ["train", "lenet5", "--data", "synthetic", "--weight-decay", "1e39"],
        ["gradients", "lenet5", "--steps", "1", "--lr", "1e39"],
        ["gradients", "lenet5", "--steps", "1", "--lr", "nan"],
        ["gradients", "lenet5", "--steps", "1", "--clip-grad-norm", "nan"],
        ["compress", "lenet5", "--data", "synthetic", "--finetune-lr", "1e39"],
    ],
    ids=lambda a: f"{a[0]} {' '.join(a[-2:])}",
)
def test_factors_float32_cannot_hold_are_refused(tmp_path, ckpt, capsys, argv) -> None:
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "run")]
    elif argv[0] == "compress":
        argv = [*argv, "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.cnz")]
    code, out, err = run(capsys, *argv)
    line = one_error_line(err)
    assert code == 2 and ("3.4e38" in line or "finite" in line) and "steps:" not in out


def test_gradients_without_a_gradient_print_no_ratio(capsys, monkeypatch) -> None:
    from cnnlab.analysis.gradients import GradientReport

    zero = GradientReport(["a", "b", "c"], [0.0] * 3, [0.0] * 3, [0.0, 0.0], [0.0], 1, None)
    monkeypatch.setattr("cnnlab.cli.analysis.gradient_norms", lambda *a, **k: zero)
    code, out, err = run(capsys, "gradients", "lenet5", "--steps", "1")  # a loss of 0
    assert code == 0 and err == ""
    assert out.count("undefined (no gradient in the last third)") == 2


@pytest.mark.parametrize("atol", ["nan", "-1", "inf"])
def test_export_refuses_a_tolerance_that_verifies_nothing(tmp_path, capsys, monkeypatch, atol):
    pytest.importorskip("onnxruntime")

    def refuse(*args, **kwargs):
        raise AssertionError("exported before the tolerance was checked")

    monkeypatch.setattr("cnnlab.deploy.export._torch_export", refuse)
    out = tmp_path / "m.onnx"
    code, _, err = run(capsys, "export", "lenet5", "--out", str(out), "--atol", atol)
    assert code == 2 and "atol must be a finite number >= 0" in one_error_line(err)
    assert not out.exists()


def test_json_of_a_diverged_model_is_valid_json(tmp_path, capsys) -> None:
    model = cnnlab.create_model("lenet_300_100", num_classes=10, in_chans=3)
    with torch.no_grad():
        # finite weights (NaN ones are refused at load) whose logits overflow to infinity
        model.get_classifier().weight.fill_(3e38)
    path = tmp_path / "huge.safetensors"
    save_checkpoint(model, path, class_names=[str(i) for i in range(10)], preprocess=PRE)
    argv = ["eval", "lenet_300_100", "--checkpoint", str(path), "--data", "synthetic", "--json"]
    code, out, _ = run(capsys, *argv, "--limit", "8")

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    assert code == 0 and json.loads(out, parse_constant=refuse)["loss"] is None


# ----------------------------------------------------- an empty value (a script's unset variable)


@pytest.mark.parametrize(
    "argv",
    [["eval", "lenet5", "--checkpoint", ""], ["summary", "lenet5", "--checkpoint", ""],
     ["export", "lenet5", "--checkpoint", "", "--out", "m.onnx"], ["train", "", "--data", "x"],
     ["predict", "lenet5", "--checkpoint", "run", ""], ["bench", "lenet5", "--checkpoint", ""],
     ["gradients", "lenet5", "--data", ""]],
)  # fmt: skip
def test_an_empty_value_is_a_usage_error(capsys, argv: list[str]) -> None:
    """Before, `eval --checkpoint ""` was a TypeError traceback, and `summary` and `export`
    took it for no checkpoint: random weights, silently."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].endswith(": empty value"), err
