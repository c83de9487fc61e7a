"""SIGTERM handled as Ctrl-C (cnnlab.signals); the whole-run behaviour is in test_train_resume."""

from __future__ import annotations

import os
import signal

import pytest

from cnnlab import signals
from cnnlab.cli import main


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # bytecodes, where Python runs the handler
        pass


def test_sigterm_raises_terminated_inside_and_nothing_is_left_behind() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as caught, signals.sigterm_as_interrupt() as received:
        _sigterm_self()
    assert isinstance(caught.value, signals.Terminated) and received.is_set()
    assert signal.getsignal(signal.SIGTERM) is before
    signals.raise_if_terminated()  # outside the scope: a later run in the process goes on
    with signals.sigterm_as_interrupt() as received:  # a new scope: no signal yet
        assert not received.is_set()
        signals.raise_if_terminated()


def test_a_lost_raise_is_quiet_and_raised_before_the_next_batch(capsys) -> None:
    class RaisesInDel:
        def __del__(self) -> None:  # Python ignores what a __del__ raises
            _sigterm_self()

    with signals.sigterm_as_interrupt() as received:
        RaisesInDel()  # collected at once: the handler's Terminated is lost
        assert received.is_set()
        assert capsys.readouterr().err == ""  # not shown as "Exception ignored in ..."
        with pytest.raises(signals.Terminated):
            next(signals.batches([1, 2]))


def test_batches_hold_the_raise_while_the_iterator_starts() -> None:
    """A DataLoader cut while starting its workers cannot clean up (its __del__ fails)."""

    class StartsSlowly:
        started = False

        def __iter__(self):
            _sigterm_self()  # arrives while the workers would start
            StartsSlowly.started = True
            return iter([1, 2])

    with signals.sigterm_as_interrupt() as received:
        seen = []
        with pytest.raises(signals.Terminated):
            for item in signals.batches(StartsSlowly()):
                seen.append(item)
        assert StartsSlowly.started and received.is_set() and seen == []


def _stops_as_a_run_does(args: object) -> int:
    try:
        _sigterm_self()
    except KeyboardInterrupt:  # what `cnnlab train` does: save, report, return 130
        return 130
    return 0


@pytest.mark.parametrize("command", [lambda args: _sigterm_self(), _stops_as_a_run_does])
def test_the_cli_exits_143_with_one_line(monkeypatch, capsys, command) -> None:
    monkeypatch.setattr("cnnlab.cli.zoo.run", command)
    assert main(["models"]) == 143
    assert capsys.readouterr().err == "cnnlab: terminated\n"
