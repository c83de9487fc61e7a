"""cnnlab.timing: interleaved rounds, a slow round (a contention spell) dropped and re-run,
a timing that cannot get clean rounds flagged, and bench / compare passing the flag on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import pytest

from cnnlab import timing
from cnnlab.timing import Contender, OtherLoad, interleave


class Spell:
    """A stand-in for the machine, on a clock of its own: every call takes ``base`` seconds,
    ``factor`` times longer while the spell is on. The probe's calls count the rounds: two per
    round."""

    def __init__(self, base: float = 0.01) -> None:  # over the probe's 5 ms: 1 call a sample
        self.base, self.factor, self.probe_calls, self.now = base, 1.0, 0, 0.0
        self.slow_rounds: set[int] = set()

    def work(self) -> None:
        self.now += self.base * self.factor

    def probe(self) -> None:
        # calibration takes 3 warm-up calls and 1 timed one; rounds start after them
        self.probe_calls += 1
        round_index = (self.probe_calls - 5) // 2
        self.factor = 20.0 if round_index in self.slow_rounds else 1.0
        self.work()


@pytest.fixture
def spell(monkeypatch) -> Spell:
    """A :class:`Spell` whose clock cnnlab.timing reads; no /proc/stat load figure."""
    machine = Spell()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: machine.now))
    monkeypatch.setattr(timing, "_busy_seconds", lambda: None)
    return machine


def contenders(spell: Spell) -> tuple[list[Contender], Contender]:
    work = [Contender("a", spell.work), Contender("b", spell.work)]
    return work, Contender("probe", spell.probe)


def test_a_slow_round_is_dropped_and_run_again(spell) -> None:
    spell.slow_rounds = {2}
    work, probe = contenders(spell)
    result = interleave(work, 5, min_sample_s=0, probe=probe)
    assert result.rounds == 6 and result.kept == 5 and result.dropped == 1
    assert result.probe_ratios[2] > 5 and max(result.probe_ratios[:2]) < timing.SLOW_ROUND
    # every kept sample is a quiet one: nothing near the 20x spell is reported
    assert all(s < 10 * spell.base for s in result.samples["a"] + result.samples["b"])
    assert len(result.samples["a"]) == len(result.samples["b"]) == 5


def test_bench_drops_a_slowed_round(monkeypatch, spell) -> None:
    """``benchmark`` with a spell over rounds 1-3 of 4 asked for: a median over the rounds as
    run would be the spell's; the rounds are run again and the quiet latency reported."""
    from cnnlab.deploy import bench
    from cnnlab.registry import build_model

    spell.slow_rounds = {1, 2, 3}

    def slowed(name: str):
        model = build_model(name)
        model.register_forward_hook(lambda *args: spell.work())
        return model

    monkeypatch.setattr(bench, "build_model", slowed)
    monkeypatch.setattr(bench, "_matmul", lambda *a: Contender("matmul", spell.work))
    monkeypatch.setattr(timing, "matmul_probe", lambda: Contender("probe", spell.probe))
    [result] = bench.benchmark(["lenet5"], repeats=4, warmup=3, train=False)
    assert result.rounds == 7 and result.clean_rounds == 4 and not result.contended
    assert result.latency_ms == pytest.approx(1e3 * spell.base)  # the 20x round is left out
    assert result.wait_policy in ("default", "active", "passive")


def test_a_machine_busy_throughout_is_flagged_contended(spell) -> None:
    spell.slow_rounds = set(range(1, 100))  # quiet only in round 0
    work, probe = contenders(spell)
    result = interleave(work, 4, min_sample_s=0, probe=probe, max_rounds=8)
    assert result.rounds == 8 and result.kept == 1
    assert result.contended


def test_other_load_flags_a_busy_machine(monkeypatch, spell) -> None:
    work, probe = contenders(spell)
    monkeypatch.setattr(OtherLoad, "__exit__", lambda self, *exc: setattr(self, "cores", 1.5))
    result = interleave(work, 3, min_sample_s=0, probe=probe)
    assert result.dropped == 0 and result.busy and result.contended
    monkeypatch.setattr(OtherLoad, "__exit__", lambda self, *exc: setattr(self, "cores", 0.01))
    assert not interleave(work, 3, min_sample_s=0, probe=probe).contended


def test_calibration_and_bad_arguments(spell) -> None:
    calls = []
    c = Contender("x", lambda: (calls.append(1), spell.work()))
    c.calibrate(warmup=2, min_sample_s=0.045)
    assert c.number == 5 and len(calls) == 3
    with pytest.raises(ValueError, match="distinct names"):
        interleave([Contender("x", int), Contender("x", int)], 2)
    with pytest.raises(ValueError, match="repeats >= 1"):
        interleave([Contender("x", int)], 0)


def test_wait_policy_reads_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert timing.wait_policy() == "default"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert timing.wait_policy() == "passive"


@pytest.mark.slow
def test_bench_wait_policy_runs_in_a_fresh_process(capfd, monkeypatch) -> None:
    from cnnlab.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    args = ["bench", "lenet5", "--wait-policy", "passive", "--no-train", "--repeats", "2",
            "--json"]  # fmt: skip
    assert main(args) == 0
    rows = json.loads(capfd.readouterr().out)
    assert rows[0]["wait_policy"] == "passive" and rows[0]["rounds"] >= rows[0]["clean_rounds"] >= 1


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_a_running_child_counts_as_our_own_work() -> None:
    """A contender may run in a worker process: its CPU time is not other processes' load."""
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", burn + "\ntime.sleep(30)"])
    try:
        before = timing._own_seconds()
        time.sleep(0.1)
        deadline = time.monotonic() + 20
        while timing._own_seconds() - before < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert timing._own_seconds() - before >= 0.3  # the child's, while it still runs
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
