"""cnnlab.experiments.optimisation: aux-heads, exploding-gradients, vanishing-gradients, init
and degradation. Every quick run writes JSON + PNG and a verdict; each judge's rule is tested
branch by branch on synthetic figures."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.experiments import VERDICTS, get_experiment, list_experiments, run_experiment
from cnnlab.experiments.optimisation import plain_cnn

NAMES = ["aux-heads", "exploding-gradients", "vanishing-gradients", "init", "degradation"]


def test_registered_with_claim_seed_and_rule():
    names = {e.name for e in list_experiments()}
    assert set(NAMES) <= names
    for name in NAMES:
        e = get_experiment(name)
        assert e.seed in ("000", "001") and f"seed {e.seed}" in e.claim and e.rule and e.source


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_json_png_and_a_verdict(name, tmp_path):
    result = run_experiment(name, "quick", tmp_path)
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert 1000 < (tmp_path / f"{name}.png").stat().st_size < 150_000
    assert saved["verdict"] in VERDICTS and saved["verdict"] == result["verdict"]
    assert saved["command"].startswith(f"cnnlab experiment run {name} --quick")
    assert get_experiment(name).judge(saved["figures"]) == (saved["verdict"], saved["reason"])


def test_plain_cnn_depth_inits_and_refusals():
    model = plain_cnn(20, "tanh", "normal")
    weights = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weights) == 20
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 19
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert float(weights[5].weight.detach().std()) == pytest.approx(0.01, rel=0.1)
    torch.manual_seed(0)
    he = plain_cnn(20, init="he")[2].weight.detach()  # 16 -> 16 channels, 3x3: fan-in 144
    assert float(he.std()) == pytest.approx((2 / 144) ** 0.5, rel=0.1)
    for bad in ({"depth": 2}, {"activation": "gelu"}, {"init": "orthogonal"}):
        with pytest.raises(ValueError):
            plain_cnn(**{"depth": 10, **bad})


# --- aux-heads -----------------------------------------------------------------------------


def _aux(gain_init, gain_trained, gap_aux, gap_no):
    def arm(gap, gain=None):
        a = {"gap": gap, "test_top1": 80.0, "probe_trained": {"lower_median_ratio": gain}}
        return {**a, "probe_init": {"lower_median_ratio": gain_init}} if gain else a

    return {"aux": arm(gap_aux, gain_trained), "no_aux": arm(gap_no)}


@pytest.mark.parametrize(
    ("gains", "gaps", "verdict"),
    [
        ((1.5, 1.3), (3.0, 6.0), "holds"),
        ((1.5, 1.3), (5.0, 6.0), "partly"),  # gap shrinks, by less than 2 points
        ((1.5, 1.1), (3.0, 6.0), "partly"),  # gradient gain partly
        ((1.01, 1.02), (7.0, 6.0), "contradicted"),
        ((1.5, 1.3), (6.0, 6.0), "partly"),  # gradient holds, regularisation contradicted
    ],
)
def test_aux_rule(gains, gaps, verdict):
    figures = _aux(*gains, *gaps)
    assert get_experiment("aux-heads").judge(figures)[0] == verdict


def test_aux_rule_without_a_finite_run():
    figures = _aux(1.5, 1.3, 3.0, 6.0)
    figures["no_aux"]["nonfinite_step"] = 12
    verdict, reason = get_experiment("aux-heads").judge(figures)
    assert verdict == "partly" and "non-finite" in reason  # the gradient part holds alone


# --- exploding-gradients -------------------------------------------------------------------


def _run(lr, clip, nonfinite):
    return {"lr": lr, "clip": clip, "nonfinite_step": nonfinite, "steps": 10,
            "max_grad_norm": 5.0, "test_top1": 50.0}  # fmt: skip


@pytest.mark.parametrize(
    ("fates", "verdict"),
    [
        ({0.1: (None, None), 1.0: (3, None)}, "holds"),
        ({0.1: (None, None), 1.0: (3, 7)}, "contradicted"),
        ({0.5: (4, None), 1.0: (3, 7)}, "partly"),
        ({0.1: (None, None), 1.0: (None, None)}, "not-testable"),
    ],
)
def test_exploding_rule(fates, verdict):
    runs = [r for lr, (u, c) in fates.items() for r in (_run(lr, None, u), _run(lr, 1.0, c))]
    got, reason = get_experiment("exploding-gradients").judge({"runs": runs})
    assert got == verdict and "lr 1:" in reason


# --- vanishing-gradients -------------------------------------------------------------------


def _vanish(sigmoid, tanh):
    """(first/last ratio, test top-1) per saturating activation, against ReLU's (1.0, 85)."""
    arms = {}
    for init in ("xavier", "he"):
        arms[f"relu/{init}"] = {"first_over_last": 1.0, "test_top1": 85.0}
        for act, (ratio, top1) in (("sigmoid", sigmoid), ("tanh", tanh)):
            arms[f"{act}/{init}"] = {"first_over_last": ratio, "test_top1": top1}
    return {"arms": arms}


@pytest.mark.parametrize(
    ("sigmoid", "tanh", "verdict"),
    [
        ((1e-5, 10.0), (0.05, 80.0), "holds"),
        ((1e-5, 10.0), (0.5, 84.0), "partly"),  # tanh: neither loses much
        ((1e-5, 10.0), (0.05, 84.0), "partly"),  # tanh loses gradient, trains as well
        ((0.5, 86.0), (2.0, 85.0), "contradicted"),
    ],
)
def test_vanishing_rule(sigmoid, tanh, verdict):
    assert get_experiment("vanishing-gradients").judge(_vanish(sigmoid, tanh))[0] == verdict


# --- init ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train", "test", "verdict"),
    [
        ((90, 15, 11), (88, 15, 10), "holds"),
        ((90, 85, 60), (88, 84, 60), "partly"),  # all train, but not alike
        ((90, 89, 88), (88, 86, 85), "contradicted"),
        ((12, 11, 10), (12, 11, 10), "not-testable"),
        ((15, 80, 10), (15, 80, 10), "partly"),  # He fails, Xavier trains
    ],
)
def test_init_rule(train, test, verdict):
    arms = {
        k: {"train_top1": a, "test_top1": b, "norms": [0.1, 0.2], "nonfinite_step": None}
        for k, a, b in zip(("he", "xavier", "normal"), train, test, strict=True)
    }
    figures = {"setup": {"model": "plain"}, "arms": arms}
    assert get_experiment("init").judge(figures)[0] == verdict


# --- degradation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("errors", "verdict"),
    [
        ((10, 15, 9, 8), "holds"),
        ((10, 15, 9, 12), "partly"),  # residual 56 a little worse
        ((10, 15, 9, 16), "partly"),  # plain holds, residual degrades as much
        ((10, 9, 9, 12), "contradicted"),  # no plain degradation, residual degrades
        ((10, 11, 9, 9), "partly"),  # plain gap under 2 points
    ],
)
def test_degradation_rule(errors, verdict):
    nets = {
        k: {"train_error": e, "test_top1": 100 - e}
        for k, e in zip(("plain20", "plain56", "resnet20", "resnet56"), errors, strict=True)
    }
    assert get_experiment("degradation").judge({"nets": nets})[0] == verdict
