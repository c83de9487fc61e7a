"""Training claims about layers and regularisers, each a small controlled training on real
Fashion-MNIST images: BatchNorm speeds up training (seeds 000, 001), LRN and its replacement
by BatchNorm (seed 001), dropout and data augmentation against overfitting (seed 001), VGG's
stacked 3x3 filters (seed 001).

The networks are the papers' layouts, scaled down to 32x32 grayscale images and CPU budgets
(each builder's docstring says how); every weight layer starts from He-normal convolutions
(He et al. 2015) so that depth alone does not stall the plain arms. In one comparison every
arm trains on the same images, in the same order, from the same seed
(:func:`cnnlab.experiments.training.train_curve`: SGD, momentum 0.9, weight decay 5e-4,
learning rate 0.01 with a cosine decay: the settings of Krizhevsky et al. Sec. 5 and
Simonyan & Zisserman Sec. 3.1), so the arms differ only in what the claim is about. The
default scale repeats each comparison with two seeds (another draw of images, initial weights
and order); a difference is judged only where it exceeds the seed noise (the larger of one
point and the largest difference between two seeds of one arm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.analysis import count_macs
from cnnlab.experiments.base import Experiment, combine, pyplot, register, save_figure
from cnnlab.experiments.timing import ROUNDS, OtherLoad, race, ratio, summary
from cnnlab.experiments.training import FashionSubset, fashion_subset, train_curve
from cnnlab.models.alexnet import ALEXNET_2012, LRN_ALPHA, LRN_BETA, LRN_K, LRN_N
from cnnlab.models.vgg import CFGS

SIZE = 32  # Fashion-MNIST's 28x28 zero-padded to 32x32, one channel
CLASSES = 10
BATCH = 64
LR = 0.01  # Krizhevsky et al. Sec. 5; Simonyan & Zisserman Sec. 3.1
MIN_MARGIN = 1.0  # points of top-1: a smaller difference is never judged
BN_STEP_RATIO = 0.5  # Ioffe & Szegedy Sec. 4.2.2: "in less than half the number of steps"


@dataclass(frozen=True)
class Setting:
    """One scale of one experiment: the subset, the epochs, the seeds and the width (the
    paper's channel counts divided by ``width_div``)."""

    n_train: int
    n_test: int
    epochs: int
    seeds: tuple[int, ...]
    width_div: int
    hidden: int  # units of each hidden FC layer


# --- the networks -----------------------------------------------------------------------


def _conv(cin: int, cout: int, kernel: int, norm: str | None = None) -> list[nn.Module]:
    """Conv (same padding), then BN before the ReLU (Ioffe & Szegedy Sec. 3.2) or LRN after
    it (Krizhevsky et al. Sec. 3.3, the paper's constants), or neither."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2)]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    if norm == "lrn":
        layers.append(nn.LocalResponseNorm(LRN_N, LRN_N * LRN_ALPHA, LRN_BETA, LRN_K))
    return layers


def _fc_head(features: int, hidden: int, drop_rate: float) -> list[nn.Module]:
    """Flatten, FC-hidden, ReLU, dropout, FC-hidden, ReLU, dropout, FC-10 (the AlexNet and
    VGG heads, Krizhevsky et al. Sec. 4.2 / Simonyan & Zisserman Sec. 2.1, narrower)."""
    return [
        nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
        nn.Linear(hidden, CLASSES),
    ]  # fmt: skip


def _he_init(model: nn.Sequential) -> nn.Sequential:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def vgg_net(width_div: int, batch_norm: bool, hidden: int, drop_rate: float = 0.5) -> nn.Module:
    """VGG-11 (Simonyan & Zisserman Table 1 column A: 8 convs 3x3, 5 max-pools) with every
    width divided by ``width_div``, on 32x32 (the fifth pool leaves 1x1), FC ``hidden``,
    dropout 0.5 (Sec. 3.1); ``batch_norm`` after every conv as torchvision's ``vgg11_bn``."""
    layers: list[nn.Module] = []
    chans = 1
    for v in CFGS["A"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += _conv(chans, int(v) // width_div, 3, "bn" if batch_norm else None)
            chans = int(v) // width_div
    return _he_init(nn.Sequential(*layers, *_fc_head(chans, hidden, drop_rate)))


def alexnet_net(width_div: int, norm: str | None, hidden: int, drop_rate: float = 0.5) -> nn.Module:
    """AlexNet's layout (Krizhevsky et al. Sec. 3.5, ``ALEXNET_2012``: five convs, ``norm``
    where the paper has LRN (conv1, conv2), overlapping 3x3/2 pools after conv1, conv2,
    conv5, two hidden FC layers with dropout) on 32x32: one tower, widths divided by
    ``width_div``, conv1 5x5 stride 1 instead of 11x11 stride 4 (32 -> 15 -> 7 -> 3)."""
    layers: list[nn.Module] = []
    chans = 1
    for row in ALEXNET_2012:
        out = row.out_chans // width_div
        layers += _conv(chans, out, min(row.kernel, 5), norm if row.lrn else None)
        layers += [nn.MaxPool2d(3, 2)] if row.pool else []
        chans = out
    return _he_init(nn.Sequential(*layers, *_fc_head(chans * 9, hidden, drop_rate)))


def filters_net(chans: int, big: bool) -> nn.Module:
    """A stem conv 3x3 and pool (32 -> 16), then two blocks of ``chans`` channels, each
    either one 7x7 conv (``big``) or three 3x3 convs with a ReLU after each (Simonyan &
    Zisserman Sec. 2.3), each followed by a 2x2 pool; global average pool, FC-10."""

    def block() -> list[nn.Module]:
        return _conv(chans, chans, 7) if big else [m for _ in range(3) for m in
                                                   _conv(chans, chans, 3)]  # fmt: skip

    return _he_init(nn.Sequential(
        *_conv(1, chans, 3), nn.MaxPool2d(2), *block(), nn.MaxPool2d(2), *block(),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans, CLASSES),
    ))  # fmt: skip


# --- training the arms --------------------------------------------------------------------


@torch.no_grad()
def _top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 (%) in eval mode (no dropout), in batches of 500."""
    model.eval()
    correct = sum(int((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum())
                  for i in range(0, len(y), 500))  # fmt: skip
    return 100.0 * correct / len(y)


def _train(model: nn.Module, data: FashionSubset, setting: Setting, seed: int, **kw: Any) -> dict:
    """One arm, one seed: ``train_curve``'s per-epoch history, then the final top-1 on the
    training images (eval mode, no augmentation) and the gap to the test top-1."""
    curve = train_curve(model, data, epochs=setting.epochs, batch_size=BATCH, lr=LR,
                        seed=seed, **kw)  # fmt: skip
    history = [{k: round(v, 4) for k, v in h.items()} for h in curve["history"]]
    test = history[-1]["test_top1"] if history else float("nan")
    train = _top1(model, data.train_x, data.train_y)
    return {
        "seed": seed, "history": history, "steps": curve["steps"],
        "steps_per_epoch": max(1, len(data.train_y) // BATCH),
        "nonfinite_step": curve["nonfinite_step"], "train_top1": train, "test_top1": test,
        "gap": train - test, "seconds": round(sum(h["seconds"] for h in history), 2),
        "params": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip


Arm = tuple[Callable[[], nn.Module], dict[str, Any]]


def _run_arms(arms: dict[str, Arm], setting: Setting) -> dict[str, list[dict]]:
    """Every arm with every seed; a seed draws its own subset, initial weights and order,
    shared by the arms."""
    out: dict[str, list[dict]] = {name: [] for name in arms}
    for seed in setting.seeds:
        data = fashion_subset(setting.n_train, setting.n_test, SIZE, 1, seed=seed)
        for name, (build, kw) in arms.items():
            torch.manual_seed(seed)
            out[name].append(_train(build(), data, setting, seed, **kw))
    return out


def _setting_figures(setting: Setting) -> dict[str, Any]:
    return {"setting": {**setting.__dict__, "seeds": list(setting.seeds), "batch": BATCH,
                        "lr": LR, "size": SIZE}}  # fmt: skip


# --- judging a difference against the seed noise ------------------------------------------


def _noise(arms: dict[str, list[dict]], names: tuple[str, ...], key: str) -> float:
    """The largest difference between two seeds of one arm (0 with one seed)."""
    return max(max(r[key] for r in arms[n]) - min(r[key] for r in arms[n]) for n in names)


def _compare(arms: dict[str, list[dict]], better: str, worse: str, key: str) -> tuple[str, str]:
    """Part verdict on ``key(better) - key(worse)`` per seed: holds if every seed's
    difference exceeds the margin (the larger of MIN_MARGIN and the seed noise),
    contradicted if every one is below minus the margin, else partly (within the noise, or
    beyond it in some seeds only)."""
    diffs = [b[key] - w[key] for b, w in zip(arms[better], arms[worse], strict=True)]
    margin = max(MIN_MARGIN, _noise(arms, (better, worse), key))
    if all(d > margin for d in diffs):
        verdict = "holds"
    elif all(d < -margin for d in diffs):
        verdict = "contradicted"
    else:
        verdict = "partly"
    text = ", ".join(f"{d:+.2f}" for d in diffs)
    noise = ""
    if verdict == "partly":
        inside = all(abs(d) <= margin for d in diffs)
        noise = ", within the seed noise" if inside else ", beyond it in some seeds only"
    return verdict, f"{better} - {worse} {key}: {text} per seed (margin {margin:.2f}{noise})"


def _means(arms: dict[str, list[dict]], key: str) -> str:
    return ", ".join(f"{n} {sum(r[key] for r in rs) / len(rs):.2f}" for n, rs in arms.items())


# --- plots ------------------------------------------------------------------------------


def _plot_curves(ax: Any, arms: dict[str, list[dict]], key: str, ylabel: str) -> None:
    """``key`` of every arm and seed against the training step (end of each epoch)."""
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for colour, (name, runs) in zip(colours, arms.items(), strict=False):
        for i, r in enumerate(runs):
            steps = [h["epoch"] * r["steps_per_epoch"] for h in r["history"]]
            ax.plot(steps, [h[key] for h in r["history"]], color=colour, marker=".",
                    linestyle="-" if i == 0 else "--", label=name if i == 0 else None)  # fmt: skip
    ax.set_xlabel("training step (dashed: second seed)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def _plot_bars(ax: Any, arms: dict[str, list[dict]], key: str, ylabel: str) -> None:
    """The mean of ``key`` per arm, every seed as a dot."""
    names = list(arms)
    ax.bar(names, [sum(r[key] for r in arms[n]) / len(arms[n]) for n in names], alpha=0.6)
    for i, n in enumerate(names):
        ax.plot([i] * len(arms[n]), [r[key] for r in arms[n]], "k.")
    ax.set_ylabel(ylabel)


# --- batchnorm --------------------------------------------------------------------------

BN_SETTINGS = {
    "quick": Setting(1024, 500, 2, (0,), 16, 64),
    "default": Setting(4000, 1000, 8, (0, 1), 4, 256),
    "full": Setting(60000, 10000, 30, (0, 1, 2), 1, 4096),
}


def _steps_to(run: dict, target: float) -> int | None:
    """Steps until the end of the first epoch whose test top-1 reaches ``target``."""
    for h in run["history"]:
        if h["test_top1"] >= target:
            return h["epoch"] * run["steps_per_epoch"]
    return None


def run_batchnorm(scale: str) -> dict[str, Any]:
    s = BN_SETTINGS[scale]
    arms = _run_arms({
        "plain": (lambda: vgg_net(s.width_div, False, s.hidden), {}),
        "bn": (lambda: vgg_net(s.width_div, True, s.hidden), {}),
    }, s)  # fmt: skip
    seeds = []
    for plain, bn in zip(arms["plain"], arms["bn"], strict=True):
        best = max((h["test_top1"] for h in plain["history"]), default=float("nan"))
        steps = {"plain_steps": _steps_to(plain, best), "bn_steps": _steps_to(bn, best)}
        seeds.append({"seed": plain["seed"], "plain_best_top1": best, **steps})
    net = f"VGG-11 (column A) widths / {s.width_div}, FC {s.hidden}, 32x32"
    return {**_setting_figures(s), "arms": arms, "per_seed": seeds, "net": net}


def judge_batchnorm(figures: dict[str, Any]) -> tuple[str, str]:
    """Per seed: the steps the BN net needs to reach the plain net's best test top-1, over
    the steps the plain net needed. holds if every ratio <= 0.5; contradicted if in every
    seed BN needs as many steps or more (or never gets there); else partly."""
    ratios = []
    for s in figures["per_seed"]:
        bn, plain = s["bn_steps"], s["plain_steps"]
        ratios.append(None if bn is None or plain is None else bn / plain)
    if all(r is not None and r <= BN_STEP_RATIO for r in ratios):
        verdict = "holds"
    elif all(r is None or r >= 1 for r in ratios):
        verdict = "contradicted"
    else:
        verdict = "partly"
    text = "; ".join(
        f"seed {s['seed']}: plain best {s['plain_best_top1']:.2f}% at step {s['plain_steps']}, "
        f"BN reaches it at step {s['bn_steps']}" + ("" if r is None else f" ({r:.2f}x)")
        for s, r in zip(figures["per_seed"], ratios, strict=True)
    )
    arms = figures["arms"]
    reason = (f"{text} -> {verdict} (holds needs <= {BN_STEP_RATIO}x in every seed); final "
              f"test top-1 {_means(arms, 'test_top1')}; first-epoch train loss "
              + ", ".join(f"{n} {sum(r['history'][0]['train_loss'] for r in rs) / len(rs):.3f}"
                          for n, rs in arms.items() if all(r["history"] for r in rs))
              + f"; seconds per run {_means(arms, 'seconds')}")  # fmt: skip
    return verdict, reason


def plot_batchnorm(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    _plot_curves(left, figures["arms"], "test_top1", "test top-1 (%)")
    _plot_curves(right, figures["arms"], "train_loss", "training loss (epoch mean)")
    fig.suptitle(f"BatchNorm (seeds 000, 001): {figures['net']}", fontsize=10)
    save_figure(fig, path)


register(Experiment(
    name="batchnorm",
    claim="BatchNorm speeds up training: Inception-BN is GoogLeNet trained with batch "
    "normalisation (seed 000); seed 001 says BN was first used in ResNet, which is wrong: "
    "Ioffe & Szegedy introduced it in 2015 on Inception, before ResNet",
    seed="001",
    source="Ioffe & Szegedy 2015, Sec. 4.2 (Fig. 2-3: BN-Baseline reaches Inception's "
    "accuracy in less than half the steps); measured on a VGG-11 with / without BN "
    "(Simonyan & Zisserman Table 1 column A, scaled down)",
    rule="per seed, the steps (end of an epoch) the BN net needs to reach the plain net's "
    "best test top-1, over the steps the plain net needed for it: holds if <= 0.5 in every "
    "seed (the paper's 'less than half'), contradicted if >= 1 (or never reached) in every "
    "seed, else partly; same images, order, seed and learning rate for both",
    run=run_batchnorm,
    judge=judge_batchnorm,
    plot=plot_batchnorm,
))  # fmt: skip


# --- lrn --------------------------------------------------------------------------------

LRN_SETTINGS = {
    "quick": Setting(512, 500, 2, (0,), 16, 64),
    "default": Setting(4000, 1000, 6, (0, 1), 8, 256),
    "full": Setting(60000, 10000, 30, (0, 1, 2), 1, 4096),
}


def _step_times(builds: dict[str, Callable[[], nn.Module]], rounds: int) -> dict[str, Any]:
    """Seconds per training step (forward + backward at batch 64, no update) of each arm,
    interleaved rounds (:func:`cnnlab.experiments.timing.race`)."""
    torch.manual_seed(0)
    models = {n: b().train() for n, b in builds.items()}
    x, y = torch.randn(BATCH, 1, SIZE, SIZE), torch.randint(0, CLASSES, (BATCH,))

    def step(model: nn.Module) -> None:
        with torch.enable_grad():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

    with OtherLoad() as load:
        samples = race({n: (lambda m=m: step(m)) for n, m in models.items()}, rounds)
    return {
        "arms": {n: summary(s) for n, s in samples.items()},
        "lrn_over_none": ratio(samples["lrn"], samples["none"]),
        "bn_over_none": ratio(samples["bn"], samples["none"]),
        "other_load_cores": load.cores,
    }


def run_lrn(scale: str) -> dict[str, Any]:
    s = LRN_SETTINGS[scale]
    builds = {n: (lambda n=n: alexnet_net(s.width_div, n if n != "none" else None, s.hidden))
              for n in ("none", "lrn", "bn")}  # fmt: skip
    arms = _run_arms({n: (b, {}) for n, b in builds.items()}, s)
    return {**_setting_figures(s), "arms": arms, "step_time": _step_times(builds, ROUNDS[scale]),
            "net": f"AlexNet layout, widths / {s.width_div}, FC {s.hidden}, 32x32"}  # fmt: skip


def judge_lrn(figures: dict[str, Any]) -> tuple[str, str]:
    """Two parts on the final test top-1, each judged against the seed noise: LRN beats no
    normalisation; BN in LRN's place beats LRN. Step times are reported, not judged."""
    arms, t = figures["arms"], figures["step_time"]
    lrn, lrn_text = _compare(arms, "lrn", "none", "test_top1")
    bn, bn_text = _compare(arms, "bn", "lrn", "test_top1")
    ms = ", ".join(f"{n} {v['latency_ms']:.1f}" for n, v in t["arms"].items())
    load = t["other_load_cores"]
    reason = (
        f"LRN helps: {lrn_text} -> {lrn}; BN replaces it: {bn_text} -> {bn}; mean test top-1 "
        f"{_means(arms, 'test_top1')}. Time per training step (ms, batch {BATCH}): {ms}; "
        f"LRN/none {t['lrn_over_none']['ratio']:.2f}x, BN/none {t['bn_over_none']['ratio']:.2f}x"
        + ("" if load is None else f" (other processes kept {load:.2f} cores busy meanwhile)")
    )
    return combine({"lrn": lrn, "bn": bn}), reason


def plot_lrn(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(12, 3.5))
    _plot_curves(left, figures["arms"], "test_top1", "test top-1 (%)")
    _plot_bars(mid, figures["arms"], "test_top1", "final test top-1 (%)")
    mid.set_ylim(bottom=min(r["test_top1"] for rs in figures["arms"].values() for r in rs) - 5)
    times = figures["step_time"]["arms"]
    right.bar(list(times), [v["latency_ms"] for v in times.values()], color="tab:gray")
    right.set_ylabel(f"ms per training step (batch {BATCH})")
    fig.suptitle(f"LRN / BN / neither (seed 001): {figures['net']}", fontsize=10)
    save_figure(fig, path)


register(Experiment(
    name="lrn",
    claim="AlexNet used Local Response Normalisation, which batch normalisation later "
    "replaced (seed 001: 'Local Response Norm - ... batch-normalization', the middle of the "
    "sentence is lost); the paper: LRN lowers the top-1 error by 1.4 points",
    seed="001",
    source="Krizhevsky, Sutskever, Hinton 2012, Sec. 3.3 (LRN, k=2, n=5, alpha=1e-4, "
    "beta=0.75); Ioffe & Szegedy 2015, Sec. 3.2 (BN before the non-linearity)",
    rule="two parts on the final test top-1 of an AlexNet-style net with LRN after conv1 and "
    "conv2, BN in the same two places, or neither (same images, order, seed): 'LRN helps' "
    "holds if LRN - none exceeds the margin in every seed, 'BN replaces LRN' holds if BN - "
    "LRN does; a part is contradicted if the difference is below minus the margin in every "
    "seed, else partly (within the seed noise); margin = max(1 point, the largest difference "
    "between two seeds of one arm); verdict: combine() of the two parts; the time per step "
    "is reported, not judged",
    run=run_lrn,
    judge=judge_lrn,
    plot=plot_lrn,
))  # fmt: skip


# --- dropout and augmentation: overfitting on a small subset -------------------------------

OVERFIT_SETTINGS = {
    "quick": Setting(256, 500, 3, (0,), 16, 128),
    "default": Setting(1000, 2000, 40, (0, 1), 8, 512),
    "full": Setting(5000, 10000, 100, (0, 1, 2), 1, 4096),
}


def _judge_overfit(figures: dict[str, Any], good: str, bad: str) -> tuple[str, str]:
    """Two parts, each against the seed noise: the train-test gap is smaller with the
    regulariser, and its test top-1 is higher."""
    arms = figures["arms"]
    gap, gap_text = _compare(
        {k: [{**r, "gap": -r["gap"]} for r in v] for k, v in arms.items()}, good, bad, "gap"
    )
    test, test_text = _compare(arms, good, bad, "test_top1")
    reason = (
        f"gap (train top-1 in eval mode - test top-1): {_means(arms, 'gap')}; "
        f"{gap_text.replace('gap', 'minus gap')} -> {gap}; test top-1: {test_text} -> {test}; "
        f"final train top-1 {_means(arms, 'train_top1')}, test top-1 {_means(arms, 'test_top1')}"
    )
    return combine({"gap": gap, "test": test}), reason


def _plot_overfit(figures: dict[str, Any], path: Path, title: str) -> None:
    plt = pyplot()
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(12, 3.5))
    _plot_curves(left, figures["arms"], "train_loss", "training loss (epoch mean)")
    _plot_curves(mid, figures["arms"], "test_loss", "test loss")
    _plot_bars(right, figures["arms"], "gap", "train - test top-1 (points)")
    fig.suptitle(f"{title}: {figures['net']}", fontsize=10)
    save_figure(fig, path)


def run_dropout(scale: str) -> dict[str, Any]:
    s = OVERFIT_SETTINGS[scale]
    arms = _run_arms({
        "dropout": (lambda: alexnet_net(s.width_div, None, s.hidden, 0.5), {}),
        "none": (lambda: alexnet_net(s.width_div, None, s.hidden, 0.0), {}),
    }, s)  # fmt: skip
    net = f"AlexNet layout, widths / {s.width_div}, FC {s.hidden} x 2 (dropout 0.5 or none)"
    return {**_setting_figures(s), "arms": arms, "net": f"{net}, {s.n_train} images"}


def judge_dropout(figures: dict[str, Any]) -> tuple[str, str]:
    """The gap and test parts, dropout against none (see :func:`_judge_overfit`)."""
    return _judge_overfit(figures, "dropout", "none")


register(Experiment(
    name="dropout",
    claim="dropout in AlexNet's large fully connected layers reduces overfitting (seed 001, "
    "whose list of AlexNet's features survives only in part: the words on dropout are lost; "
    "Krizhevsky et al.: 'without dropout, our network exhibits substantial overfitting')",
    seed="001",
    source="Krizhevsky, Sutskever, Hinton 2012, Sec. 4.2; Srivastava et al. 2014 (JMLR), "
    "Sec. 6",
    rule="an AlexNet-style net trained on a small subset (same images, order, seed) with "
    "dropout 0.5 on its two hidden FC layers or none; 'gap' part holds if the train-test "
    "top-1 gap (train top-1 in eval mode) is smaller with dropout by more than the margin in "
    "every seed, 'test' part holds if the test top-1 is higher with dropout by more than the "
    "margin in every seed; a part is contradicted if the difference goes the other way "
    "beyond the margin in every seed, else partly (within the seed noise); margin = max(1 "
    "point, the largest difference between two seeds of one arm); verdict: combine()",
    run=run_dropout,
    judge=judge_dropout,
    plot=lambda f, p: _plot_overfit(f, p, "Dropout (seed 001)"),
))  # fmt: skip


def run_augmentation(scale: str) -> dict[str, Any]:
    s = OVERFIT_SETTINGS[scale]
    build = lambda: alexnet_net(s.width_div, None, s.hidden, 0.0)  # noqa: E731
    arms = _run_arms({"augment": (build, {"augment": True}), "none": (build, {})}, s)
    return {**_setting_figures(s), "arms": arms, "net": f"AlexNet layout, widths / "
            f"{s.width_div}, FC {s.hidden} x 2, no dropout, {s.n_train} images; augment: "
            f"random crop (padding 4) + horizontal flip"}  # fmt: skip


def judge_augmentation(figures: dict[str, Any]) -> tuple[str, str]:
    """The gap and test parts, augmentation against none (see :func:`_judge_overfit`)."""
    return _judge_overfit(figures, "augment", "none")


register(Experiment(
    name="augmentation",
    claim="data augmentation (random crops, horizontal reflections) reduces overfitting "
    "(seed 001 on AlexNet, whose list of AlexNet's features survives only in part: the words "
    "on augmentation are lost; Krizhevsky et al.: 'without this scheme, our network suffers "
    "from substantial overfitting')",
    seed="001",
    source="Krizhevsky, Sutskever, Hinton 2012, Sec. 4.1",
    rule="an AlexNet-style net without dropout trained on a small subset (same images, order, "
    "seed) with random crops (padding 4) and horizontal flips or without; 'gap' part holds "
    "if the train-test top-1 gap (train top-1 in eval mode, unaugmented) is smaller with "
    "augmentation by more than the margin in every seed, 'test' part holds if the test top-1 "
    "is higher with it by more than the margin in every seed; a part is contradicted if the "
    "difference goes the other way beyond the margin in every seed, else partly (within the "
    "seed noise); margin = max(1 point, the largest difference between two seeds of one "
    "arm); verdict: combine()",
    run=run_augmentation,
    judge=judge_augmentation,
    plot=lambda f, p: _plot_overfit(f, p, "Data augmentation (seed 001)"),
))  # fmt: skip


# --- small-filters ----------------------------------------------------------------------

# width_div divides VGG's first width, 64; hidden is unused (the net ends in a global pool)
FILTER_SETTINGS = {
    "quick": Setting(512, 500, 2, (0,), 8, 0),
    "default": Setting(3200, 1000, 8, (0, 1), 2, 0),
    "full": Setting(60000, 10000, 30, (0, 1, 2), 1, 0),
}
STACKS = {"7x7": (7, 1), "3x3 x3": (3, 3), "5x5": (5, 1), "3x3 x2": (3, 2)}  # kernel, layers


def _stack(chans: int, kernel: int, layers: int, device: str = "meta") -> nn.Sequential:
    with torch.device(device):
        return nn.Sequential(*[nn.Conv2d(chans, chans, kernel, padding=kernel // 2, bias=False)
                               for _ in range(layers)])  # fmt: skip


def _receptive_field(kernel: int, layers: int) -> int:
    """The side of the input window that reaches one output value, measured: the rows of the
    input gradient of the centre output that are non-zero (one channel, weights 1)."""
    stack = _stack(1, kernel, layers, "cpu")
    for conv in stack:
        nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 21, 21, requires_grad=True)
    stack(x)[0, 0, 10, 10].backward()
    return int((x.grad[0, 0].abs().sum(1) > 0).sum())


def _filter_analytic(chans: int) -> dict[str, Any]:
    """Per stack: weights counted on the layers (no bias) and per C^2, the formula
    layers x k^2, the measured receptive field, and the ReLUs it would carry."""
    out = {}
    for name, (k, n) in STACKS.items():
        counted = sum(p.numel() for p in _stack(chans, k, n).parameters())
        out[name] = {"weights": counted, "per_c2": counted / chans**2, "formula": n * k * k,
                     "receptive_field": _receptive_field(k, n), "relus": n}  # fmt: skip
    return {"chans": chans, "stacks": out}


def run_small_filters(scale: str) -> dict[str, Any]:
    s = FILTER_SETTINGS[scale]
    chans = 64 // s.width_div
    builds = {"3x3 x3": lambda: filters_net(chans, False), "7x7": lambda: filters_net(chans, True)}
    arms = _run_arms({n: (b, {}) for n, b in builds.items()}, s)
    size = {n: {"params": sum(p.numel() for p in b().parameters()),
                "macs": count_macs(b(), (1, SIZE, SIZE))} for n, b in builds.items()}  # fmt: skip
    return {**_setting_figures(s), "analytic": _filter_analytic(chans), "arms": arms,
            "nets": size, "net": f"stem 3x3, then two blocks of {chans} channels: one 7x7 "
            f"conv or three 3x3 convs, global average pool, 32x32"}  # fmt: skip


def judge_small_filters(figures: dict[str, Any]) -> tuple[str, str]:
    """Three parts: parameters (counted = layers x k^2 x C^2, and the 3x3 stacks smaller),
    receptive field (measured: three 3x3 = 7x7, two 3x3 = 5x5), accuracy (three 3x3 beat one
    7x7 in test top-1 beyond the seed noise)."""
    st = figures["analytic"]["stacks"]
    exact = all(v["per_c2"] == v["formula"] for v in st.values())
    smaller = st["3x3 x3"]["weights"] < st["7x7"]["weights"] and (
        st["3x3 x2"]["weights"] < st["5x5"]["weights"]
    )
    params = "holds" if exact and smaller else "contradicted"
    same_rf = (st["3x3 x3"]["receptive_field"] == st["7x7"]["receptive_field"]
               and st["3x3 x2"]["receptive_field"] == st["5x5"]["receptive_field"])  # fmt: skip
    rf = "holds" if same_rf else "contradicted"
    acc, acc_text = _compare(figures["arms"], "3x3 x3", "7x7", "test_top1")
    nets = figures["nets"]
    reason = (
        "weights per C^2: "
        + ", ".join(f"{n} {v['per_c2']:g}" for n, v in st.items())
        + f" ({'= layers x k^2' if exact else 'NOT layers x k^2'}): three 3x3 "
        f"{st['3x3 x3']['per_c2'] / st['7x7']['per_c2']:.0%} of a 7x7, two 3x3 "
        f"{st['3x3 x2']['per_c2'] / st['5x5']['per_c2']:.0%} of a 5x5 -> {params}; receptive "
        "field (measured): "
        + ", ".join(f"{n} {v['receptive_field']}" for n, v in st.items())
        + f" -> {rf}; accuracy: {acc_text} -> {acc}; mean test top-1 "
        f"{_means(figures['arms'], 'test_top1')}; nets: "
        + ", ".join(
            f"{n} {v['params']:,} params, {v['macs'] / 1e6:.1f}M MACs" for n, v in nets.items()
        )
    )
    return combine({"params": params, "receptive_field": rf, "accuracy": acc}), reason


def plot_small_filters(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    st = figures["analytic"]["stacks"]
    left.bar(list(st), [v["per_c2"] for v in st.values()],
             color=["tab:orange", "tab:blue", "tab:orange", "tab:blue"])  # fmt: skip
    for i, v in enumerate(st.values()):
        left.text(i, v["per_c2"], f"RF {v['receptive_field']}", ha="center", va="bottom")
    left.set_ylabel("weights per C^2 (C in, C out)")
    _plot_curves(right, figures["arms"], "test_top1", "test top-1 (%)")
    fig.suptitle(f"Stacked 3x3 vs one large filter (seed 001): {figures['net']}", fontsize=10)
    save_figure(fig, path)


register(Experiment(
    name="small-filters",
    claim="VGG uses small 3x3 filters instead of large ones (11x11, 5x5): a stack of 3x3 "
    "convolutions sees as far as one large filter with fewer parameters and more "
    "non-linearities, and does better (seed 001)",
    seed="001",
    source="Simonyan & Zisserman 2015, Sec. 2.3 (three 3x3 = 7x7 receptive field, 27 C^2 "
    "against 49 C^2 weights) and Sec. 4.1 (B with 5x5 in place of 3x3 pairs: 7% higher "
    "top-1 error)",
    rule="three parts: 'params' holds if the weights counted on the layers equal layers x k^2 "
    "x C^2 and three 3x3 (two 3x3) have fewer than one 7x7 (5x5); 'receptive_field' holds "
    "if the measured receptive field of three 3x3 equals 7x7's and two 3x3 equal 5x5's; "
    "'accuracy': nets with one 7x7 or three 3x3 convs per block (same channels, same "
    "images, order, seed) holds if three 3x3 beat 7x7 in test top-1 by more than the margin "
    "in every seed, contradicted if below minus the margin in every seed, else partly "
    "(within the seed noise); margin = max(1 point, the largest difference between two "
    "seeds of one arm); verdict: combine()",
    run=run_small_filters,
    judge=judge_small_filters,
    plot=plot_small_filters,
))  # fmt: skip
