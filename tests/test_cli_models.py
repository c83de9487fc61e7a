import json
import os
import subprocess
import sys

import pytest

from cnnlab.cli import main


def test_models_table(capsys):
    assert main(["models", "vgg16*"]) == 0
    out = capsys.readouterr().out
    assert "vgg16_bn" in out and "138,357,544" in out and "15,470" in out


def test_models_json(capsys):
    assert main(["models", "resnet50", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "resnet50" and row["params"] == 25_557_032
    assert row["paper"] and row["source"] and row["input_size"] == [3, 224, 224]


def test_one_model_shows_its_keywords_and_feature_levels(capsys):
    assert main(["models", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "shortcut='A'" in out and "drop_path_rate=0.0" in out
    assert "conv4_x (64 ch, /4)" in out
    assert main(["models", "lenet_300_100"]) == 0
    assert "features_only is refused" in capsys.readouterr().out
    assert main(["models", "mobilenet_v2", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["keywords"]["alpha"] == 1.0 and row["feature_info"][3]["num_chs"] == 576


def test_models_no_match_is_one_line_exit_2(capsys):
    assert main(["models", "nothing-like-this*"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error:") and err.count("\n") == 1


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_closed_stdout_is_a_quiet_exit_141():
    read, write = os.pipe()
    os.close(read)  # as `cnnlab models | head -1` once head has gone
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cnnlab", "models"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""
