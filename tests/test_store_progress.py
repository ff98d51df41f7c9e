"""The waveform store's progress bar follows the one switch of specnorm.progress (`SPECNORM_PROGRESS`)."""

import pytest

from specnorm import progress, store


@pytest.mark.parametrize("setting, bar", [("bar", True), ("lines", False)])
def test_store_progress_follows_the_switch(monkeypatch, setting, bar):
    monkeypatch.setenv("SPECNORM_PROGRESS", setting)
    assert store._progress_wanted() is bar


def test_store_progress_guess_is_interactive(monkeypatch):
    # Without the switch, the store guesses as every other progress report does (a notebook or a terminal).
    monkeypatch.delenv("SPECNORM_PROGRESS", raising=False)
    for answer in (True, False):
        monkeypatch.setattr(progress, "interactive", lambda answer=answer: answer)
        assert store._progress_wanted() is answer
