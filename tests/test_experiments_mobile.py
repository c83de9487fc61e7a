"""The MobileNet experiments (seed 004): every quick run writes JSON + PNG and a verdict that
its rule gives again from the saved figures; each rule's branches on synthetic figures; the
expansion keyword leaves the default network unchanged."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from cnnlab.experiments import VERDICTS, get_experiment, run_experiment
from cnnlab.registry import build_model

NAMES = ["width-resolution", "linear-bottleneck", "expansion", "mobilenet-v2-vs-v1"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Each experiment's quick run, once per module: (result, saved JSON, folder)."""
    folder, done = tmp_path_factory.mktemp("quick"), {}

    def get(name: str) -> tuple[dict, dict]:
        if name not in done:
            result = run_experiment(name, "quick", folder)
            done[name] = result, json.loads((folder / f"{name}.json").read_text())
        return done[name]

    get.folder = folder
    return get


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_json_png_and_a_verdict(name, quick):
    result, saved = quick(name)
    assert 0 < (quick.folder / f"{name}.png").stat().st_size < 100_000
    assert saved["verdict"] in VERDICTS and saved["verdict"] == result["verdict"]
    assert saved["seed"] == "004" and saved["rule"] and saved["claim"] and saved["source"]
    assert saved["command"].startswith(f"cnnlab experiment run {name} --quick")
    figures = saved["figures"]
    assert figures["margin"] == 1.0  # one seed at the quick scale: the fixed least margin
    assert figures["budget"]["seeds"] == [0] and figures["device"] == "cpu"
    assert get_experiment(name).judge(figures) == (saved["verdict"], saved["reason"])


def test_quick_figures_are_measured(quick):
    """The costs come from the models: fewer channels or pixels, fewer MACs and memory."""
    width = quick("width-resolution")[1]["figures"]
    points = width["points"]
    for keys in width["axes"].values():
        macs = [points[k]["macs"] for k in keys]
        assert macs == sorted(macs, reverse=True) and len(set(macs)) == 4
        assert all(0 <= points[k]["mean_top1"] <= 100 for k in keys)
        assert all(points[k]["latency"]["latency_ms"] > 0 for k in keys)
    assert points["1@224"]["macs"] == 568_740_352  # the registry's mobilenet_v1 figure
    assert [points[k]["train_side"] for k in width["axes"]["rho"]] == [56, 48, 40, 32]
    arms = quick("expansion")[1]["figures"]["arms"]
    assert arms["t=6"]["macs"] == 300_774_272  # the registry's mobilenet_v2 figure
    assert [arms[f"t={t}"]["t"] for t in (1, 2, 4, 6, 10)] == [1, 2, 4, 6, 10]


def test_expansion_six_is_the_default_network():
    """t=6 builds exactly the default MobileNetV2 (names, shapes, values from one seed)."""
    torch.manual_seed(0)
    default = build_model("mobilenet_v2").state_dict()
    torch.manual_seed(0)
    six = build_model("mobilenet_v2", t=6).state_dict()
    assert list(default) == list(six)
    assert all(torch.equal(default[k], six[k]) for k in default)
    ten = build_model("mobilenet_v2", t=10).state_dict()
    assert ten["blocks.1.conv.0.conv.weight"].shape[0] == 160  # 16 channels x 10
    assert default["blocks.1.conv.0.conv.weight"].shape[0] == 96  # 16 x 6


# --- width-resolution on synthetic figures ----------------------------------------------


def _ratio(slow: float, fast: float, unstable: bool = False, rounds: int = 25) -> dict:
    return {"ratio": slow / fast, "ratio_iqr_fraction": 0.4 if unstable else 0.05,
            "ratio_unstable": unstable, "rounds": rounds}  # fmt: skip


def _width(acc: dict, lat: dict, mem: dict, busy: float = 0.0, unstable: bool = False) -> dict:
    """Figures with the given per-axis top-1, latency (ms) and memory lists, largest first."""
    points, axes, steps, whole = {}, {}, {}, {}
    for axis in ("alpha", "rho"):
        axes[axis] = [f"{axis}{i}" for i in range(4)]
        for i, key in enumerate(axes[axis]):
            points[key] = {
                "alpha": 1.0 - 0.25 * i if axis == "alpha" else 1.0,
                "rho": 1.0 - 0.143 * i if axis == "rho" else 1.0,
                "side": 224 - 32 * i if axis == "rho" else 224,
                "train_side": 56 - 8 * i if axis == "rho" else 56,
                "mean_top1": acc[axis][i], "memory_bytes": mem[axis][i],
                "latency": {"latency_ms": lat[axis][i]},
            }  # fmt: skip
        ms = lat[axis]
        steps[axis] = [_ratio(a, b, unstable) for a, b in itertools.pairwise(ms)]
        whole[axis] = _ratio(ms[0], ms[-1], unstable)
    return {
        "points": points, "axes": axes, "latency_steps": steps, "latency_whole": whole,
        "other_load_cores": busy, "latency_rounds_wanted": 25, "margin": 1.5,
    }  # fmt: skip


FALLING = {"alpha": [85.0, 83.0, 80.0, 75.0], "rho": [85.0, 84.0, 82.0, 80.0]}
FAST = {"alpha": [24.0, 15.0, 9.0, 5.0], "rho": [24.0, 18.0, 13.0, 9.0]}
SMALL = {"alpha": [50e6, 35e6, 22e6, 11e6], "rho": [50e6, 38e6, 27e6, 20e6]}


@pytest.mark.parametrize(
    ("acc", "lat", "mem", "busy", "unstable", "verdict", "text"),
    [
        (FALLING, FAST, SMALL, 0.0, False, "holds", "80.0% -> holds"),
        # rho's accuracy differences inside the 1.5-point noise
        ({**FALLING, "rho": [85.0, 85.5, 84.5, 84.0]}, FAST, SMALL, 0.0, False, "partly",
         "(within seed noise) -> not-testable"),
        # alpha falls overall but one step down gains more than the noise
        ({**FALLING, "alpha": [85.0, 80.0, 83.0, 75.0]}, FAST, SMALL, 0.0, False, "partly",
         "75.0% -> partly"),
        # a step down that is not 5% faster
        (FALLING, {**FAST, "alpha": [24.0, 23.5, 9.0, 5.0]}, SMALL, 0.0, False, "partly",
         "1.02x, 2.61x, 1.80x) -> partly"),
        # memory does not fall at every step
        (FALLING, FAST, {**SMALL, "rho": [50e6, 52e6, 27e6, 20e6]}, 0.0, False, "partly",
         "19.1 MiB -> partly"),
        # a busy machine or a wide spread: latency not judged
        (FALLING, FAST, SMALL, 0.5, False, "partly", "0.50 cores busy"),
        (FALLING, FAST, SMALL, 0.0, True, "partly", "IQR is 40% of it: not judged"),
        # everything backwards
        ({"alpha": FALLING["alpha"][::-1], "rho": FALLING["rho"][::-1]},
         {"alpha": FAST["alpha"][::-1], "rho": FAST["rho"][::-1]},
         {"alpha": SMALL["alpha"][::-1], "rho": SMALL["rho"][::-1]}, 0.0, False,
         "contradicted", "-> contradicted"),
    ],
)  # fmt: skip
def test_width_rule(acc, lat, mem, busy, unstable, verdict, text):
    figures = _width(acc, lat, mem, busy, unstable)
    got, reason = get_experiment("width-resolution").judge(figures)
    assert got == verdict, reason
    assert text in reason
    assert "margin 1.5 points" in reason


def test_width_rule_needs_every_timing_round_clean():
    figures = _width(FALLING, FAST, SMALL)
    figures["latency_steps"]["rho"][1]["rounds"] = 7  # other work slowed 18 of 25 rounds
    verdict, reason = get_experiment("width-resolution").judge(figures)
    assert verdict == "partly"
    assert "only 7 of 25 timing rounds were clean: not judged -> not-testable" in reason
    assert "1.60x, 1.67x, 1.80x) -> holds" in reason  # the alpha axis is still judged


def test_width_rule_speed_contradicted_alone():
    lat = {**FAST, "rho": [24.0, 24.0, 24.0, 23.5]}  # lower resolution, no faster
    verdict, reason = get_experiment("width-resolution").judge(_width(FALLING, lat, SMALL))
    assert verdict == "partly"
    assert "24.0 -> 23.5 ms (1.02x faster; steps 1.00x, 1.00x, 1.02x) -> contradicted" in reason


# --- the trained comparisons on synthetic figures -----------------------------------------


def _arm(*top1: float, **extra) -> dict:
    return {"top1": list(top1), "mean_top1": sum(top1) / len(top1), **extra}


@pytest.mark.parametrize(
    ("linear", "relu6", "verdict", "text"),
    [
        ((80.0, 81.0), (77.0, 78.0), "holds", "+3.0 points"),
        ((80.0, 81.0), (80.5, 79.5), "not-testable", "within the seed noise"),
        ((76.0, 77.0), (80.0, 80.5), "contradicted", "-3.8 points"),
    ],
)
def test_linear_bottleneck_rule(linear, relu6, verdict, text):
    figures = {"arms": {"linear": _arm(*linear), "relu6": _arm(*relu6)}, "margin": 1.0,
               "budget": {"epochs": 4}}  # fmt: skip
    got, reason = get_experiment("linear-bottleneck").judge(figures)
    assert got == verdict and text in reason


def _expansion(top1: dict[int, float], margin: float = 1.0) -> dict:
    arms = {f"t={t}": _arm(a, t=t, macs=50e6 * t, params=1e6 * t) for t, a in top1.items()}
    return {"arms": arms, "margin": margin, "budget": {"epochs": 3}}


@pytest.mark.parametrize(
    ("top1", "margin", "verdict", "text"),
    [
        ({1: 70.0, 2: 74.0, 4: 76.0, 6: 78.0, 10: 77.5}, 1.0, "holds", "best in [5, 10]: t=6"),
        ({1: 70.0, 2: 74.0, 4: 76.0, 6: 75.0, 10: 78.0}, 1.0, "holds", "t=10, best outside: t=4"),
        ({1: 70.0, 2: 74.0, 4: 77.5, 6: 78.0, 10: 77.0}, 1.0, "not-testable", "within the seed"),
        ({1: 70.0, 2: 74.0, 4: 80.0, 6: 78.0, 10: 77.0}, 1.0, "contradicted", "-2.0 points"),
        ({1: 70.0, 2: 74.0, 4: 80.0, 6: 78.0, 10: 77.0}, 2.5, "not-testable", "margin 2.5"),
    ],
)
def test_expansion_rule(top1, margin, verdict, text):
    got, reason = get_experiment("expansion").judge(_expansion(top1, margin))
    assert got == verdict and text in reason


def _versions(macs_ratio: float, v1_over_v2: float, v1: tuple, v2: tuple, busy: float = 0.0,
              unstable: bool = False, rounds: int = 25) -> dict:  # fmt: skip
    def arm(top1: tuple, macs: float, ms: float) -> dict:
        return _arm(*top1, macs=macs, params=4e6, latency={"latency_ms": ms})

    return {
        "arms": {"mobilenet_v1": arm(v1, 569e6, 24.0),
                 "mobilenet_v2": arm(v2, 569e6 * macs_ratio, 24.0 / v1_over_v2)},
        "macs_v2_over_v1": macs_ratio, "v1_over_v2": _ratio(v1_over_v2, 1.0, unstable, rounds),
        "other_load_cores": busy, "latency_rounds_wanted": 25, "margin": 1.0,
        "budget": {"epochs": 4},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("figures", "verdict", "text"),
    [
        (_versions(0.53, 1.5, (80.0, 80.5), (80.0, 80.0)), "holds", "V1/V2 1.50x -> holds"),
        (_versions(0.53, 1.5, (80.0, 80.5), (84.0, 84.0)), "holds", "beyond the noise"),
        (_versions(0.53, 1.05, (80.0, 80.5), (80.0, 80.0)), "partly", "no clear difference"),
        (_versions(0.53, 0.8, (80.0, 80.5), (80.0, 80.0)), "partly", "0.80x -> contradicted"),
        (_versions(0.53, 1.5, (80.0, 80.5), (78.0, 78.5)), "partly", "-2.0 points"),
        (_versions(0.53, 1.5, (80.0, 80.5), (80.0, 80.0), busy=0.4), "partly", "cores busy"),
        (_versions(0.53, 1.5, (80.0, 80.5), (80.0, 80.0), unstable=True), "partly", "IQR"),
        (
            _versions(0.53, 1.5, (80.0, 80.5), (80.0, 80.0), rounds=3),
            "partly",
            "(only 3 of 25 timing rounds were clean: not judged) -> not-testable",
        ),
        (_versions(0.95, 0.8, (80.0, 80.5), (75.0, 75.0)), "contradicted", "0.95"),
        (_versions(0.95, 1.5, (80.0, 80.5), (75.0, 75.0), busy=0.4), "contradicted", "busy"),
    ],
)
def test_v2_vs_v1_rule(figures, verdict, text):
    got, reason = get_experiment("mobilenet-v2-vs-v1").judge(figures)
    assert got == verdict, reason
    assert text in reason
