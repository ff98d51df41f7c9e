"""Progress output: bars only where they can redraw (a terminal, a notebook), one plain line elsewhere."""

import io
import re
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from specnorm import progress
from specnorm.cache import preprocess_audio_folder
from specnorm.progress import interactive, progress_bar
from specnorm.stats import compute_stats


class Terminal(io.StringIO):
    "A stdout that says it is a terminal."

    def isatty(self):
        return True


def test_interactive_follows_stdout_and_the_override(monkeypatch):
    monkeypatch.delenv("SPECNORM_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a file, a pipe, a CI log
    assert not interactive()
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert interactive()
    monkeypatch.setenv("SPECNORM_PROGRESS", "lines")
    assert not interactive()
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setenv("SPECNORM_PROGRESS", "bar")
    assert interactive()
    monkeypatch.setattr("fastcore.imports.IN_NOTEBOOK", True)
    monkeypatch.delenv("SPECNORM_PROGRESS")
    assert interactive()  # a notebook redraws its HTML bars in place


def test_plain_line_counts_what_was_consumed(monkeypatch, capsys):
    monkeypatch.setenv("SPECNORM_PROGRESS", "lines")
    assert list(progress_bar(iter(range(7)), label="reading", unit="files")) == list(range(7))
    out = capsys.readouterr().out
    assert re.fullmatch(r"reading: 7 files in \d+\.\d s\n", out)
    for i, _ in enumerate(progress_bar(range(10), label="some", unit="batches")):
        if i == 3:  # stopped at the fourth, which is not used: 3 taken
            break
    assert capsys.readouterr().out.startswith("some: 3 batches in ")
    assert list(progress_bar(range(3), show=False)) == [0, 1, 2]
    assert capsys.readouterr().out == ""


def test_no_line_when_the_loop_fails(monkeypatch, capsys):
    monkeypatch.setenv("SPECNORM_PROGRESS", "lines")

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(progress_bar(broken(), label="reading"))
    assert capsys.readouterr().out == ""


def test_bars_on_a_terminal(monkeypatch, capsys):
    "Where a bar can redraw, fastprogress draws it (carriage returns) and no plain line is printed."
    monkeypatch.setenv("SPECNORM_PROGRESS", "bar")
    assert sum(progress_bar(range(5), label="adding")) == 10
    out = capsys.readouterr().out
    assert "\r" in out and "adding:" not in out


def test_compute_stats_and_the_audio_cache_report_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SPECNORM_PROGRESS", "lines")
    batches = [torch.randn(2, 1, 4, 6) for _ in range(5)]
    (rec,) = compute_stats(batches, red_dims=[(0, 2, 3)])
    reference = torch.stack(batches).double()
    assert rec.mean.item() == pytest.approx(reference.mean().item(), abs=1e-6)
    assert re.fullmatch(r"statistics: 5 batches in \d+\.\d s\n", capsys.readouterr().out)
    (rec,) = compute_stats(batches, red_dims=[(0, 2, 3)], max_batches=2)
    assert rec.nbatches == 2 and capsys.readouterr().out.startswith("statistics: 2 batches in ")
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.wav")
        sf.write(files[-1], np.zeros(1600, dtype=np.float32), 16000)
    for workers in (0, 2):
        cache = preprocess_audio_folder(files, tmp_path / f"cache{workers}", n_workers=workers)
        assert all(cache.path_for(f).is_file() for f in files)
        assert re.fullmatch(r"audio cache: 3 files in \d+\.\d s\n", capsys.readouterr().out)
    monkeypatch.setattr(progress, "interactive", lambda: False)
    compute_stats(batches, progress=False)
    assert capsys.readouterr().out == ""
