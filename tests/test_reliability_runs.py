"""Issue 14, the runs part: atomic checkpoints, the run lock, finished runs, option ranges,
one error line for every failure, stale files, the input size, devices, progress, predict.

Kills are injected, not timed: a patched ``os.replace`` / ``os.fsync`` raises at its k-th
call, for every k of a two-epoch run, and after a simulated kill nothing cleans up (as after
SIGKILL); the next run must resume (or, before the first checkpoint, start afresh) and end
bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import cnnlab.saved
from cnnlab import registry
from cnnlab.cli import main
from cnnlab.train import TrainConfig, fit, load_state, save_state
from cnnlab.train import trainer as trainer_module
from test_train_helpers import TINY_MODELS, TinyNet

QUICK = {"progress": False, "tensorboard": False, "log": None}
TRAIN = ["train", "tiny", "--data", "synthetic", "--limit", "64", "--batch-size", "32",
         "--img-size", "8", "--epochs", "1", "--no-progress", "--no-tensorboard"]  # fmt: skip


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, entry in TINY_MODELS.items():
        monkeypatch.setitem(registry._REGISTRY, name, entry)


def cfg(**kw) -> TrainConfig:
    base = dict(model="tiny", data="synthetic", epochs=2, batch_size=32, limit=64, img_size=8)
    return TrainConfig(**{**base, **kw})


def _one_error(capsys: pytest.CaptureFixture, *parts: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, err
    return err


def _same(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


class Killed(BaseException):
    """A simulated SIGKILL: no ``except`` catches it."""


def _inject(monkeypatch: pytest.MonkeyPatch, k: int, exc: type[BaseException]) -> dict:
    """Make the k-th call of os.replace / os.fsync raise ``exc``; after a Killed, unlink does
    nothing (a dead process removes no temp file). Returns the call counter."""
    seen = {"n": 0, "dead": False}
    real_replace, real_unlink = os.replace, pathlib.Path.unlink

    def step(real):
        def wrapped(*args, **kwargs):
            seen["n"] += 1
            if seen["n"] == k:
                seen["dead"] = exc is Killed
                raise exc()
            return real(*args, **kwargs)

        return wrapped

    def unlink(self, missing_ok=False):
        if not seen["dead"]:
            real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", step(real_replace))
    monkeypatch.setattr(os, "fsync", step(lambda fd: None))  # counted; no wait for the disk
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    return seen


# ------------------------------------------------------------------ 1. atomic checkpoints


@pytest.mark.parametrize("exc", [Killed, KeyboardInterrupt])
def test_a_kill_at_every_write_step_leaves_a_run_that_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]
) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # counted below; no wait for the disk
    fit(cfg(), tmp_path / "straight", **QUICK)
    with monkeypatch.context() as m:
        total = _inject(m, 10**9, exc)
        fit(cfg(), tmp_path / "count", **QUICK)
    assert total["n"] >= 20  # every write step of two checkpoints
    for k in range(1, total["n"] + 1):
        out = tmp_path / f"k{k}"
        lines: list[str] = []
        with monkeypatch.context() as m:
            _inject(m, k, exc)
            if exc is Killed:
                with pytest.raises(Killed):
                    fit(cfg(), out, **{**QUICK, "log": lines.append})
            else:
                assert fit(cfg(), out, **{**QUICK, "log": lines.append})["interrupted"]
        committed = (out / "last.json").exists()
        if exc is KeyboardInterrupt:
            said = lines[-1]
            if committed:
                epoch = json.loads((out / "last.json").read_text())["step"] // 2
                assert f"(epoch {epoch}); --resume continues" in said, (k, said)
            else:
                assert "no checkpoint was written" in said and "--resume" not in said, (k, said)
        summary = fit(cfg(), out, resume=committed, **QUICK)
        assert summary["epochs"] == 2, k
        assert _same(tmp_path / "straight" / "last.safetensors", out / "last.safetensors"), k
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or
                    p.name.startswith(".last-")], k  # fmt: skip


def test_ctrl_c_at_every_write_step_of_the_cli_is_exit_130_and_a_summary_of_the_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cnnlab train` cut by Ctrl-C while it writes a checkpoint: exit 130, no traceback, and
    the summary (its epochs, top-1 and best top-1) is that of the committed checkpoint."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    with monkeypatch.context() as m:
        total = _inject(m, 10**9, KeyboardInterrupt)
        assert main([*TRAIN, "--out", str(tmp_path / "count")]) == 0
    for k in range(1, total["n"] + 1):
        out = tmp_path / f"k{k}"
        capsys.readouterr()
        with monkeypatch.context() as m:
            _inject(m, k, KeyboardInterrupt)
            assert main([*TRAIN, "--out", str(out)]) == 130, k
        said = capsys.readouterr().out.splitlines()[-1]
        if (out / "last.json").exists():
            best = load_state(out / "last.state.pt")["best_top1"]
            assert said.startswith("tiny: val top-1") and f"(best top-1 {best:.2%})" in said, k
        else:
            assert "no checkpoint was written" in said, k
        summary = fit(cfg(epochs=1), out, resume=(out / "last.json").exists(), **QUICK)
        assert summary["epochs"] == 1 and not summary["interrupted"], k


def test_a_killed_data_loader_worker_is_one_line_naming_the_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What PyTorch raises when the OOM killer takes a --workers process, in epoch 2."""
    real, count = trainer_module.run_epoch, {"n": 0}

    def killed_worker(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 2:
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "run_epoch", killed_worker)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--epochs", "2"]) == 2
    _one_error(capsys, "DataLoader worker (pid 4242) is killed by signal: Killed",
               "(epoch 1); --resume continues")  # fmt: skip
    monkeypatch.setattr(trainer_module, "run_epoch", real)
    assert main([*TRAIN, "--out", str(out), "--epochs", "2", "--resume"]) == 0


def test_checkpoint_manifest_names_a_complete_pair(tmp_path: Path) -> None:
    fit(cfg(), tmp_path, **QUICK)
    manifest = json.loads((tmp_path / "last.json").read_text())
    assert manifest["step"] == load_state(tmp_path / "last.state.pt")["step"] == 4


# ------------------------------------------------------------------ 2. the run lock


def test_a_second_training_into_a_locked_folder_exits_2_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cnnlab.train.checkpoint import RunLock

    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(out)
    try:
        assert main([*TRAIN, "--out", str(out)]) == 2
        _one_error(capsys, "in use by another training", f"pid {os.getpid()}",
                   socket.gethostname())  # fmt: skip
        assert not (out / "last.json").exists()
    finally:
        lock.release()
    assert main([*TRAIN, "--out", str(out)]) == 0


def test_a_full_disk_when_taking_the_lock_names_the_lock_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(os, "pwrite", full)
    assert main([*TRAIN, "--out", str(out)]) == 2
    _one_error(capsys, f"No space left on device: {out / '.lock'}")


def test_a_lock_that_is_a_symlink_or_a_fifo_is_refused_and_its_target_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("a user's data\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(precious)
    assert main([*TRAIN, "--out", str(out)]) == 2
    _one_error(capsys, f"{str(out / '.lock')!r} is not a regular file")
    assert precious.read_text() == "a user's data\n" and not (out / "last.json").exists()
    (out / ".lock").unlink()
    os.mkfifo(out / ".lock")
    assert main([*TRAIN, "--out", str(out)]) == 2
    _one_error(capsys, f"{str(out / '.lock')!r} is not a regular file")


def test_a_manifest_linked_to_a_huge_file_is_refused_without_reading_it(
    trained: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = trained.parent / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(2**40)  # sparse: 1 TiB that read_bytes() would try to hold
    (trained / "last.json").unlink()
    (trained / "last.json").symlink_to(huge)
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: pytest.fail("read in full"))
    assert main([*TRAIN, "--out", str(trained), "--resume"]) == 2
    _one_error(capsys, "last.json", "above the manifest limit 4,096")


def test_a_forked_data_loader_worker_does_not_keep_the_run_lock(tmp_path: Path) -> None:
    """SIGKILL ends the training but its --workers processes live on for seconds: they must
    not hold the lock that a --resume started at once needs."""
    from cnnlab.train.checkpoint import RunLock

    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(out)
    (r, w), (ready_r, ready_w) = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker, started: alive until the test closes ``w``
        os.close(w)
        os.write(ready_w, b"1")
        os.read(r, 1)
        os._exit(0)
    os.read(ready_r, 1)
    for fd in (r, ready_r, ready_w):
        os.close(fd)
    try:
        lock.release()  # the training process is gone
        RunLock(out).release()  # a --resume takes the folder at once
    finally:
        os.close(w)
        os.waitpid(pid, 0)


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("999999999 elsewhere\n")
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert (out / ".lock").read_text().split()[0] == str(os.getpid())


# ------------------------------------------------------------------ 3. finished runs


def test_resume_of_a_finished_run_says_so_and_more_epochs_extend_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0
    assert "already finished its 1 epochs; nothing to do" in capsys.readouterr().out
    assert main([*TRAIN, "--out", str(out), "--resume", "--epochs", "3"]) == 0
    said = capsys.readouterr().out
    assert "extending the run from 1 to 3 epochs" in said and "epoch 3/3" in said
    state = load_state(out / "last.state.pt")
    assert state["epoch"] == 3 and state["config"]["epochs"] == 3
    assert state["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine over 3 epochs
    assert main([*TRAIN, "--out", str(out), "--resume", "--epochs", "2"]) == 2
    _one_error(capsys, "has done 3 epochs already")


# ------------------------------------------------------------------ 4. numeric options


@pytest.mark.parametrize(
    "option",
    [("--clip-grad-norm", "-1"), ("--clip-grad-norm", "0"), ("--lr", "inf"),
     ("--weight-decay", "-1"), ("--img-size", "0"), ("--warmup-epochs", "nan"),
     ("--seed", str(2**64)), ("--batch-size", "0"), ("--label-smoothing", "1")],
)  # fmt: skip
def test_train_numeric_options_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: tuple[str, str]
) -> None:
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), *option]) == 2
    _one_error(capsys, option[0][2:].replace("-", "_"))
    assert not out.exists()


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    fit(cfg(epochs=1), out, **QUICK)
    return out


def _images(folder: Path, n: int = 2, size: int = 10) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(np.full((size, size, 3), 50 * i, np.uint8)).save(paths[-1])
    return paths


@pytest.mark.parametrize(
    "option",
    [("--batch-size", "0"), ("--seed", "-1"), ("--img-size", "0"), ("--limit", "0"),
     ("--val-split", "1.5"), ("--workers", "-2"), ("--workers", "100000")],
)  # fmt: skip
def test_eval_numeric_options(trained: Path, capsys, option: tuple[str, str]) -> None:
    args = ["eval", "tiny", "--checkpoint", str(trained), "--data", "synthetic", *option]
    assert main(args) == 2
    _one_error(capsys, option[0])


@pytest.mark.parametrize("top", ["-3", "0"])
def test_predict_top_must_be_positive(trained: Path, tmp_path: Path, capsys, top: str) -> None:
    image = _images(tmp_path / "img", 1)[0]
    assert main(["predict", "tiny", "--checkpoint", str(trained), str(image), "--top", top]) == 2
    _one_error(capsys, "--top must be an integer >= 1")


def test_predict_refuses_the_detectors_option_on_a_classifier(
    trained: Path, tmp_path: Path, capsys
) -> None:
    image = _images(tmp_path / "img", 1)[0]
    args = ["predict", "tiny", "--checkpoint", str(trained), str(image), "--score-thresh", "0.5"]
    assert main(args) == 2
    _one_error(capsys, "--score-thresh is for detectors")


# ------------------------------------------------------------------ 10. one error line


def _full_disk(after: int):
    calls = {"n": 0}
    real = cnnlab.saved.save_weights

    def save_weights(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    return save_weights


@pytest.mark.parametrize("after", [0, 2])  # at the first checkpoint; at the second
def test_a_full_disk_while_training_is_one_error_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "save_weights", _full_disk(after))
    assert main([*TRAIN, "--out", str(out), "--epochs", "2"]) == 2
    if after == 0:
        _one_error(capsys, "No space left on device", "no checkpoint was written")
        assert not (out / "last.json").exists()
        return
    _one_error(capsys, "epoch 2", "No space left on device", "(epoch 1); --resume continues")
    monkeypatch.setattr(trainer_module, "save_weights", _full_disk(10**9))
    assert main([*TRAIN, "--out", str(out), "--epochs", "2", "--resume"]) == 0
    assert load_state(out / "last.state.pt")["epoch"] == 2


def test_out_that_is_a_file_or_below_one(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main([*TRAIN, "--out", str(afile)]) == 2
    _one_error(capsys, "is a file")
    assert main([*TRAIN, "--out", str(afile / "sub")]) == 2
    _one_error(capsys, "is below the file")


@pytest.mark.parametrize("device", ["tpu", "cuda:7", "nonsense"])
def test_unavailable_devices_on_train_eval_predict(
    trained: Path, tmp_path: Path, capsys, device: str
) -> None:
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    image = str(_images(tmp_path / "img", 1)[0])
    for args in (
        [*TRAIN, "--out", str(tmp_path / "new")],
        ["eval", "tiny", "--checkpoint", str(trained), "--data", "synthetic"],
        ["predict", "tiny", "--checkpoint", str(trained), image],
    ):
        assert main([*args, "--device", device]) == 2
        _one_error(capsys, device)
    assert not (tmp_path / "new").exists()


def test_eval_class_count_mismatch_is_one_line(trained: Path, tmp_path: Path, capsys) -> None:
    from cnnlab.compress import save

    data = tmp_path / "data"
    for c in ("a", "b"):
        _images(data / c, 3)
    cnz = tmp_path / "t.cnz"
    save(registry.build_model("tiny"), cnz)
    for source in (str(cnz), str(trained)):
        args = ["eval", "tiny", "--checkpoint", source, "--data", str(data), "--val-split", "0.5"]
        assert main(args) == 2
        _one_error(capsys, "has 10 classes", "has 2")


def test_evaluate_refuses_labels_beyond_the_model_outputs() -> None:
    from cnnlab.errors import CnnlabError
    from cnnlab.train import evaluate

    loader = [(torch.zeros(2, 3), torch.tensor([0, 5]))]
    with pytest.raises(CnnlabError, match="class index 5 but the model has 3 outputs"):
        evaluate(torch.nn.Identity(), loader)


def _bad_states(state: dict) -> dict[str, dict]:
    model = TinyNet()
    groups = [{**g, "params": [0]} for g in state["optimizer"]["param_groups"]]
    momentum = {**state["optimizer"], "state": {0: {"momentum_buffer": torch.zeros(3)}}}
    return {
        "history": {**state, "history": [{"x": 1}]},
        "row": {**state, "history": [{"epoch": 1, "step": "8"}]},
        "rng": {**state, "rng": {"torch": torch.zeros(3)}},
        "epoch": {**state, "epoch": "1"},
        "groups": {**state, "optimizer": {**state["optimizer"], "param_groups": groups}},
        "momentum": {**state, "optimizer": momentum},
        "scheduler": {**state, "scheduler": {"base_lrs": "x", "last_epoch": None}},
        "weights": {**state, "optimizer": {"state": {}, "param_groups": [
            {**state["optimizer"]["param_groups"][0],
             "params": list(range(len(list(model.parameters())) + 5))}]}},
    }  # fmt: skip


def test_resume_state_of_the_wrong_structure_is_refused_before_any_epoch(
    trained: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = load_state(trained / "last.state.pt")
    state.pop("format")
    monkeypatch.setattr(trainer_module, "run_epoch", lambda *a, **k: pytest.fail("trained"))
    for name, bad in _bad_states(state).items():
        save_state(bad, trained / "last.state.pt")
        assert main([*TRAIN, "--out", str(trained), "--resume"]) == 2, name
        _one_error(capsys, "last.state.pt")


def test_resume_with_older_history_rows_writes_metrics(trained: Path, capsys) -> None:
    state = load_state(trained / "last.state.pt")
    state.pop("format")
    save_state({**state, "history": [{"epoch": 1, "step": 2}]}, trained / "last.state.pt")
    assert main([*TRAIN, "--out", str(trained), "--resume", "--epochs", "2"]) == 0
    rows = (trained / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step,train_loss")


def test_ctrl_c_during_start_up_is_one_line_exit_130(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "build_loaders", interrupt)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 130
    assert capsys.readouterr().err == "cnnlab: interrupted\n"
    assert not out.exists()


# ------------------------------------------------------------------ 13. stale files, no folder


def test_temp_files_of_killed_writes_are_removed_by_the_next_run(trained: Path, capsys) -> None:
    stale = [".best.safetensors.a1b2c3.tmp", ".last.state.pt.zz9.tmp", ".last-99.state.pt",
             ".last-99.safetensors", ".metrics.csv.q.tmp"]  # fmt: skip
    for name in stale:
        (trained / name).write_bytes(b"half")
    stale.append("..last-8.state.pt.x_1.tmp")
    (trained / stale[-1]).write_bytes(b"half")
    mine = ["keep.tmp", ".notes.abc.tmp", ".last-x.safetensors", ".best.safetensors.tmp"]
    for name in mine:
        (trained / name).write_bytes(b"a user's file")
    assert main([*TRAIN, "--out", str(trained), "--resume", "--epochs", "2"]) == 0
    left = {p.name for p in trained.iterdir()}
    assert not left & set(stale) and set(mine) <= left


def test_bad_arguments_leave_no_out_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "a" / "run"
    for bad in (["--freeze", "nosuch"], ["--data", str(tmp_path / "none")],
                ["--model-kwargs", "nosuch=1"], ["--lr", "-1"]):  # fmt: skip
        assert main([*TRAIN, "--out", str(out), *bad]) == 2, bad
        capsys.readouterr()
        assert not (tmp_path / "a").exists(), bad


# ------------------------------------------------------------------ 15. input size


def test_small_images_train_at_their_own_size(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    for c in ("a", "b"):
        _images(data / c, 4, size=6)
    out = tmp_path / "run"
    args = ["train", "tiny", "--data", str(data), "--val-split", "0.25", "--epochs", "1",
            "--batch-size", "4", "--no-progress", "--no-tensorboard"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "training at 6x6, near the data's own 6x6" in said and "--img-size 16" in said
    assert load_state(out / "last.state.pt")["config"]["img_size"] is None
    assert main([*args, "--out", str(tmp_path / "r2"), "--img-size", "16"]) == 0
    assert "near the data's own" not in capsys.readouterr().out


def test_a_resumed_run_keeps_its_stored_input_size(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    for c in ("a", "b"):
        _images(data / c, 4, size=6)
    out = tmp_path / "run"
    args = ["train", "tiny", "--data", str(data), "--val-split", "0.25", "--epochs", "1",
            "--batch-size", "4", "--no-progress", "--no-tensorboard"]  # fmt: skip
    args += ["--out", str(out)]
    with monkeypatch.context() as m:
        m.setattr(trainer_module, "_data_size", lambda data: None)  # a run of an older cnnlab
        assert main(args) == 0
    assert "at 16x16x3" in capsys.readouterr().out
    assert main([*args, "--resume", "--epochs", "2"]) == 0
    said = capsys.readouterr().out
    assert "at 16x16x3" in said and "near the data's own" not in said


# ------------------------------------------------------------------ 16, 17. devices, progress


def test_eval_and_predict_take_device_cpu(trained: Path, tmp_path: Path, capsys) -> None:
    image = str(_images(tmp_path / "img", 1)[0])
    assert main(["eval", "tiny", "--checkpoint", str(trained), "--data", "synthetic",
                 "--device", "cpu", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["images"] == 128
    assert main(["predict", "tiny", "--checkpoint", str(trained), image, "--device", "cpu"]) == 0


def test_eval_and_predict_run_channels_last_unless_told(
    trained: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnlab.train.inference as inference

    layouts: list[bool] = []
    real = inference._placed

    def placed(model, device, channels_last):
        model = real(model, device, channels_last)
        layouts.append(model.conv.weight.is_contiguous(memory_format=torch.channels_last))
        return model

    monkeypatch.setattr(inference, "_placed", placed)
    image = str(_images(tmp_path / "img", 1)[0])
    results = []
    for flag in ([], ["--no-channels-last"]):
        assert main(["eval", "tiny", "--checkpoint", str(trained), "--data", "synthetic",
                     "--json", *flag]) == 0  # fmt: skip
        results.append(json.loads(capsys.readouterr().out))
        assert main(["predict", "tiny", "--checkpoint", str(trained), image, *flag]) == 0
        capsys.readouterr()
    assert layouts == [True, True, False, False]
    assert results[0]["confusion"] == results[1]["confusion"]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)


def test_progress_off_a_terminal_is_one_line_not_carriage_returns(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    train = [a for a in TRAIN if a != "--no-progress"]
    assert main([*train, "--out", str(out), "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and captured.out.count("epoch ") >= 2
    assert main(["eval", "tiny", "--checkpoint", str(out), "--data", "synthetic"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("evaluated 128 images") == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eval_shows_a_bar_on_a_terminal(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Terminal()
    monkeypatch.setattr(sys, "stderr", fake)
    assert main(["eval", "tiny", "--checkpoint", str(trained), "--data", "synthetic"]) == 0
    assert "\r" in fake.getvalue() and "eval" in fake.getvalue()


# ------------------------------------------------------------------ 18. predict


def test_predict_skips_bad_images_and_takes_folders(trained: Path, tmp_path: Path, capsys) -> None:
    good = _images(tmp_path / "imgs", 3)
    bad = tmp_path / "imgs" / "bad.png"
    bad.write_bytes(b"not an image")
    ckpt = ["predict", "tiny", "--checkpoint", str(trained)]
    assert main([*ckpt, str(good[0]), str(bad), str(tmp_path / "missing.png"), "--json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [("top" in r) for r in results] == [True, False, False]
    assert "bad.png" in captured.err and "missing.png" in captured.err
    assert main([*ckpt, str(tmp_path / "imgs"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).name for r in results] == ["bad.png", "img0.png", "img1.png",
                                                        "img2.png"]  # fmt: skip
    assert main([*ckpt, str(bad)]) == 2
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([*ckpt, str(tmp_path / "empty")]) == 2
    _one_error(capsys, "holds no image files")


# ------------------------------------------------------------------ 20. small data


def test_a_run_of_few_optimizer_steps_gets_a_note(tmp_path: Path, capsys) -> None:
    assert main([*TRAIN, "--out", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().out
    assert "note: only 2 optimizer steps in the whole run (64 images, batch 32" in said
    assert "--batch-size 8 gives 8" in said
    assert main([*TRAIN, "--out", str(tmp_path / "b"), "--batch-size", "8"]) == 0
    assert "optimizer steps" not in capsys.readouterr().out


def test_the_default_batch_follows_the_training_set_size() -> None:
    from cnnlab.data import auto_batch_size

    assert auto_batch_size(60_000) == 128 and auto_batch_size(12_800) == 128
    assert auto_batch_size(12_799) == 64 and auto_batch_size(5_000) == 32
    assert auto_batch_size(1_437) == 16 and auto_batch_size(10) == 16  # never below 16
    assert auto_batch_size(1_437, world=3) == 18  # divides among the processes


def test_small_data_trains_at_the_automatic_batch_and_resumes_with_it(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    args = ["train", "lenet5", "--data", "synthetic", "--limit", "320", "--epochs", "1",
            "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "1 epochs of 20 steps" in capsys.readouterr().out  # 320 images at batch 16
    assert main([*args[:-4], "--epochs", "2", "--resume", "--no-progress", "--no-tensorboard",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "2 epochs of 20 steps" in capsys.readouterr().out
