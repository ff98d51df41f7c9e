"""Progress reports that suit where the output goes: bars on a terminal or in a notebook, plain lines elsewhere.

A progress bar redraws itself in place with carriage returns (fastprogress on a console) or HTML updates
(in a notebook). Written to a file or a CI log, every redraw stays: one `specnorm compare` used to leave
over 200 KB of bar fragments. `interactive` is the one place that decides which kind of output is wanted;
`progress_bar` (used by `compute_stats`, `preprocess_audio_folder` and `NormDriftMonitor.scan`) and the
training loops of `specnorm.experiment` ask it.

The environment variable `SPECNORM_PROGRESS` overrides the guess: `bar` forces bars, `lines` plain lines.
"""

import os
import sys
import time
from collections.abc import Iterable, Iterator

__all__ = ["interactive", "progress_bar"]


def interactive() -> bool:
    """True when progress bars can redraw in place: stdout is a terminal, or the code runs in a notebook.

    `SPECNORM_PROGRESS=bar` or `SPECNORM_PROGRESS=lines` overrides the guess.

    Example:
        >>> import os
        >>> from specnorm.progress import interactive
        >>> os.environ['SPECNORM_PROGRESS'] = 'lines'
        >>> interactive()
        False
        >>> del os.environ['SPECNORM_PROGRESS']
    """
    forced = os.environ.get("SPECNORM_PROGRESS", "").strip().lower()
    if forced in ("bar", "bars"):
        return True
    if forced in ("line", "lines"):
        return False
    from fastcore.imports import IN_NOTEBOOK

    isatty = getattr(sys.stdout, "isatty", None)  # a replaced stdout may lack it
    return bool(IN_NOTEBOOK or (isatty is not None and isatty()))


def progress_bar(
    items: Iterable, total: int | None = None, label: str = "progress", unit: str = "items", show: bool = True
) -> Iterator:
    """Iterate over `items` with a fastprogress bar where it can redraw, else with one plain line at the end.

    Interactive (`interactive()`): fastprogress's bar, which disappears when done. Elsewhere nothing is
    printed while iterating, then one line: `"{label}: {n} {unit} in {seconds} s"` (also when the loop stops
    early with `break`; not when it raises). With `show=False`, nothing.

    Args:
        items: any iterable.
        total (int): its length, when `len(items)` does not tell it (a generator); `None` counts as unknown.
        label (str): what is being done, for the plain line (e.g. `'statistics'`).
        unit (str): what the items are, for the plain line (e.g. `'batches'`).
        show (bool): report progress at all.

    Example:
        >>> import os
        >>> from specnorm.progress import progress_bar
        >>> os.environ['SPECNORM_PROGRESS'] = 'lines'
        >>> sum(progress_bar(range(4), label='adding', unit='numbers'))   # doctest: +ELLIPSIS
        adding: 4 numbers in ... s
        6
        >>> del os.environ['SPECNORM_PROGRESS']
    """
    if not show:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    if interactive():
        from fastprogress.fastprogress import progress_bar as bar

        yield from bar(items, total=total or "noinfer", leave=False)
        return
    start, n, finished = time.perf_counter(), 0, False
    try:
        for item in items:
            yield item
            n += 1  # counted once the consumer asks for more: a `break` does not count the item it stopped at
        finished = True
    except GeneratorExit:  # the consumer stopped early (`break`): report what it took
        finished = True
        raise
    finally:
        if finished:
            print(f"{label}: {n} {unit} in {time.perf_counter() - start:.1f} s", flush=True)
