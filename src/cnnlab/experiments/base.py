"""The experiment record, its registry, and ``run_experiment``, which writes NAME.json and
NAME.png.

An experiment states a claim of a seed article (paraphrased in English, with the seed's
number), the paper section behind it, and the rule that turns its figures into a verdict.
``run(scale)`` measures and returns plain JSON data; ``judge(figures)`` applies the rule and
returns ``(verdict, reason)``; ``plot(figures, path)`` draws one PNG. The verdict is always
computed from the figures, never written by hand.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import platform
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path, atomic_write_bytes

__all__ = [
    "SCALES",
    "VERDICTS",
    "Experiment",
    "combine",
    "get_experiment",
    "list_experiments",
    "machine",
    "pyplot",
    "register",
    "run_experiment",
    "save_figure",
]

SCALES = ("quick", "default", "full")
VERDICTS = ("holds", "partly", "contradicted", "not-testable")
Figures = dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """One seed claim, measured. ``seed`` is the seed article's number ("000")."""

    name: str
    claim: str
    seed: str
    source: str
    rule: str
    run: Callable[[str], Figures]
    judge: Callable[[Figures], tuple[str, str]]
    plot: Callable[[Figures, Path], None]

    def describe(self) -> dict[str, str]:
        return {
            "name": self.name, "claim": self.claim, "seed": self.seed,
            "source": self.source, "rule": self.rule,
        }  # fmt: skip


_EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the registry (a name may be registered once)."""
    if experiment.name in _EXPERIMENTS:
        raise ValueError(f"experiment {experiment.name!r} is registered twice")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def list_experiments() -> list[Experiment]:
    """Every registered experiment, sorted by name."""
    return [_EXPERIMENTS[n] for n in sorted(_EXPERIMENTS)]


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name is a ValueError with the nearest."""
    if name in _EXPERIMENTS:
        return _EXPERIMENTS[name]
    near = difflib.get_close_matches(name, list(_EXPERIMENTS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else "; see `cnnlab experiment list`"
    raise ValueError(f"unknown experiment {name!r}{hint}")


def combine(parts: dict[str, str]) -> str:
    """One verdict from the verdicts of a claim's parts: ``holds`` if every part holds,
    ``contradicted`` if every testable part is contradicted, ``not-testable`` if none is
    testable, else ``partly``."""
    testable = [v for v in parts.values() if v != "not-testable"]
    if not testable:
        return "not-testable"
    if len(testable) == len(parts) and all(v == "holds" for v in testable):
        return "holds"
    if all(v == "contradicted" for v in testable):
        return "contradicted"
    return "partly"


def machine() -> dict[str, Any]:
    """CPU model (``/proc/cpuinfo``'s model name, else ``platform``), cores, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _command(name: str, scale: str, out: Path) -> str:
    flag = {"quick": " --quick", "default": "", "full": " --full"}[scale]
    return f"cnnlab experiment run {name}{flag} --out {shlex.quote(str(out))}"


def run_experiment(
    name: str, scale: str = "default", out: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Run experiment ``name`` at ``scale`` and write OUT/NAME.json and OUT/NAME.png.

    Returns what the JSON file holds: the claim, source, rule, figures, verdict, reason, the
    command that reproduces it, the date (UTC) and the machine. ``out`` defaults to
    ``runs/experiments``; it is created if missing.
    """
    experiment = get_experiment(name)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    folder = Path("runs/experiments" if out is None else out)
    if folder.exists() and not folder.is_dir():
        raise CnnlabError(f"--out {str(folder)!r} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    figures = experiment.run(scale)
    verdict, reason = experiment.judge(figures)
    if verdict not in VERDICTS:  # a bug in the experiment, not the user's input
        raise RuntimeError(f"{name}: judge returned {verdict!r}, not one of {VERDICTS}")
    result = {
        **experiment.describe(),
        "scale": scale,
        "figures": figures,
        "verdict": verdict,
        "reason": reason,
        "command": _command(name, scale, folder),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(
            (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1
        ),
        "machine": machine(),
    }
    experiment.plot(figures, folder / f"{name}.png")
    text = json.dumps(result, indent=2, default=str) + "\n"
    atomic_write_bytes(folder / f"{name}.json", text.encode())
    result["json"] = str(folder / f"{name}.json")
    result["png"] = str(folder / f"{name}.png")
    return result


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a small PNG (atomically) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    pyplot().close(fig)
