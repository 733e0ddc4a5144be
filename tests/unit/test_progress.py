"""The progress bar draws on a terminal and stays silent elsewhere."""

from __future__ import annotations

import io

from dockvisor.cli.progress import ProgressBar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_draws_a_bar_on_a_terminal_and_clears_it() -> None:
    term = FakeTerminal()
    with ProgressBar("create web", stream=term) as bar:
        bar("creating disk", 0.25)
        bar("booting", 0.5)
        drawn = term.getvalue()
    assert "create web [######" in drawn and "50%" in drawn and "booting" in drawn
    assert term.getvalue().endswith("\r")


def test_never_goes_backwards() -> None:
    term = FakeTerminal()
    bar = ProgressBar("x", stream=term)
    bar("a", 0.6)
    bar("b", 0.2)
    assert term.getvalue().rsplit("\r", 1)[-1].count("#") == int(24 * 0.6)


def test_silent_when_not_a_terminal() -> None:
    pipe = io.StringIO()
    with ProgressBar("create web", stream=pipe) as bar:
        bar("creating disk", 0.5)
    assert pipe.getvalue() == ""
