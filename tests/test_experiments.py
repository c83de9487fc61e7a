"""cnnlab.experiments and `cnnlab experiment`: the registry, every quick run (JSON + PNG +
a verdict), and each judge's rule on synthetic figures, one test per verdict branch."""

from __future__ import annotations

import json

import pytest

import cnnlab.cli as cli
from cnnlab.experiments import VERDICTS, combine, get_experiment, list_experiments, run_experiment

NAMES = [
    "alexnet-memory",
    "compression-ratios",
    "depthwise-cost",
    "googlenet-vs-alexnet",
    "keras-table",
    "vgg-memory",
]
GIB = 2**30


@pytest.fixture
def main(monkeypatch):
    """``cnnlab.cli.main`` with the experiment command registered (until the lead adds it)."""
    if "experiment" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "experiment"])
    return cli.main


def test_registry_lists_the_experiments():
    names = [e.name for e in list_experiments()]
    assert set(NAMES) <= set(names)
    for e in list_experiments():
        assert e.claim and e.rule and e.source and e.seed in ("000", "001", "004")


def test_unknown_name_suggests_the_nearest(main, capsys):
    with pytest.raises(ValueError, match="did you mean depthwise-cost"):
        get_experiment("depthwise-cots")
    assert main(["experiment", "run", "vgg-memroy", "--quick"]) == 2
    assert "did you mean vgg-memory" in capsys.readouterr().err


def test_cli_list(main, capsys):
    assert main(["experiment", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)
    assert main(["experiment", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= set(NAMES)


def test_cli_run_prints_figures_and_verdict(main, capsys, tmp_path):
    assert main(["experiment", "run", "compression-ratios", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "verdict: PARTLY" in out and "models.vgg16.pruning_quantization" in out
    assert main(["experiment", "run", "keras-table", "--json", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] in VERDICTS


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_json_png_and_a_verdict(name, tmp_path):
    result = run_experiment(name, "quick", tmp_path)
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.png").stat().st_size < 100_000
    assert saved["verdict"] in VERDICTS and saved["verdict"] == result["verdict"]
    assert saved["reason"] and saved["rule"] and saved["claim"] and saved["source"]
    assert saved["command"].startswith(f"cnnlab experiment run {name} --quick")
    assert saved["machine"]["cores"] and saved["machine"]["torch"]
    # the verdict is the rule applied to the saved figures
    assert get_experiment(name).judge(saved["figures"]) == (saved["verdict"], saved["reason"])


def test_bad_scale_and_out(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        run_experiment("keras-table", "huge", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="not a folder"):
        run_experiment("keras-table", "quick", tmp_path / "file")


def test_combine():
    assert combine({"a": "holds", "b": "holds"}) == "holds"
    assert combine({"a": "contradicted", "b": "contradicted"}) == "contradicted"
    assert combine({"a": "holds", "b": "contradicted"}) == "partly"
    assert combine({"a": "holds", "b": "not-testable"}) == "partly"
    assert combine({"a": "contradicted", "b": "not-testable"}) == "contradicted"
    assert combine({"a": "not-testable"}) == "not-testable"


# --- each rule on synthetic figures -----------------------------------------------------


def _googlenet(
    params_ratio: float, latency_ratio: float, unstable: bool = False, busy: float = 0.0
) -> dict:
    return {
        "params_ratio": params_ratio,
        "params_ratio_with_aux": params_ratio / 2,
        "macs_ratio_googlenet_over_alexnet": 2.2,
        "models": {"alexnet": {"params": 61e6}, "googlenet": {"params": 61e6 / params_ratio}},
        "latency": {"googlenet_over_alexnet": {
            "ratio": latency_ratio, "ratio_unstable": unstable, "ratio_iqr_fraction": 0.05,
        }, "other_load_cores": busy},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("params_ratio", "latency_ratio", "unstable", "verdict"),
    [
        (9.0, 0.8, False, "holds"),  # 9x fewer, faster
        (9.0, 1.5, False, "partly"),  # 9x fewer, slower
        (9.0, 1.05, False, "partly"),  # no clear speed difference
        (9.0, 0.8, True, "partly"),  # latency not trusted
        (5.0, 1.5, False, "contradicted"),  # 5x, slower
        (5.0, 0.8, False, "partly"),
    ],
)
def test_googlenet_rule(params_ratio, latency_ratio, unstable, verdict):
    judge = get_experiment("googlenet-vs-alexnet").judge
    assert judge(_googlenet(params_ratio, latency_ratio, unstable))[0] == verdict


def test_busy_machine_latency_not_judged():
    """Other processes using more than 0.2 cores while timing: the latency part is
    not-testable, whatever the ratio says."""
    verdict, reason = get_experiment("googlenet-vs-alexnet").judge(_googlenet(5.0, 1.5, busy=0.9))
    assert verdict == "contradicted" and "0.90 cores busy" in reason  # params part alone
    assert get_experiment("googlenet-vs-alexnet").judge(_googlenet(9.0, 0.8, busy=0.9))[0] == (
        "partly"
    )
    figures = {**_depthwise(0.0, 6.0), "other_load_cores": 0.5}
    verdict, reason = get_experiment("depthwise-cost").judge(figures)
    assert verdict == "partly" and "0.50 cores busy" in reason


def _depthwise(offset: float, latency: float, unstable: bool = False) -> dict:
    return {
        "layers": [{"mac_ratio": 0.12 + offset, "formula": 0.12}],
        "mac_speedup_total": 8.7,
        "latency_speedup_total": {
            "ratio": latency, "ratio_unstable": unstable, "ratio_iqr_fraction": 0.1,
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    ("offset", "latency", "unstable", "verdict"),
    [
        (0.0, 6.0, False, "holds"),  # at least half the MAC speed-up
        (0.0, 3.0, False, "partly"),  # below half
        (0.0, 6.0, True, "partly"),  # latency not trusted
        (1e-6, 6.0, False, "contradicted"),  # the formula fails
    ],
)
def test_depthwise_rule(offset, latency, unstable, verdict):
    assert get_experiment("depthwise-cost").judge(_depthwise(offset, latency, unstable))[0] == (
        verdict
    )


@pytest.mark.parametrize(
    ("deviations", "verdict"),
    [([0.002, -0.009], "holds"), ([0.002, 0.03], "partly"), ([0.05, -0.02], "contradicted")],
)
def test_keras_rule(deviations, verdict):
    rows = [{"row": f"r{i}", "best_deviation": d, "best_convention": "trainable"}
            for i, d in enumerate(deviations)]  # fmt: skip
    figures = {"rows": rows, "worst_deviation_per_convention": {"trainable": 0.05}}
    assert get_experiment("keras-table").judge(figures)[0] == verdict


@pytest.mark.parametrize(
    ("deviations", "max_ratio", "verdict"),
    [
        ([0.05, -0.08], 49, "partly"),  # the paper's ratios hold, the hundredfold does not
        ([0.05, -0.08], 95, "holds"),
        ([0.2, -0.3], 49, "contradicted"),
    ],
)
def test_compression_rule(deviations, max_ratio, verdict):
    figures = {
        "deviation": {f"m{i}:final": d for i, d in enumerate(deviations)},
        "max_computed_ratio": max_ratio,
        "max_paper_ratio": 49,
    }
    assert get_experiment("compression-ratios").judge(figures)[0] == verdict


def _vgg(forward_mb: float, ratio: float) -> dict:
    return {
        "analytic": {"forward_bytes": forward_mb * 1e6, "activations": forward_mb / 4 * 1e6,
                     "param_bytes": 553e6},
        "measured": {"forward_held_per_image": 72e6, "backward_peak_per_image": 72e6 * ratio,
                     "batches": [1, 2]},
        "seed_forward_bytes": 96e6,
        "forward_relu_not_in_place": 115e6,
        "backward_over_forward": ratio,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("forward_mb", "ratio", "verdict"),
    [(90, 2.0, "holds"), (61, 2.0, "partly"), (90, 1.0, "partly"), (61, 1.0, "contradicted")],
)
def test_vgg_rule(forward_mb, ratio, verdict):
    assert get_experiment("vgg-memory").judge(_vgg(forward_mb, ratio))[0] == verdict


@pytest.mark.parametrize(("gib", "verdict"), [(4.0, "holds"), (2.2, "contradicted")])
def test_alexnet_rule(gib, verdict):
    figures = {
        "estimates": {"analytic": 1.4 * GIB, "measured": gib * GIB},
        "gpu_bytes": 3 * GIB,
        "parts": {"weights": 0.7 * GIB},
        "batch": 128,
        "analytic": {"input": [3, 227, 227]},
    }
    assert get_experiment("alexnet-memory").judge(figures)[0] == verdict
