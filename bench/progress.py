"""Progress display: a main bar that follows the run's budget, nested phase bars, and logs that stay readable.

On a terminal the trainer shows one main bar (:class:`RunBar`) and, below it, a short-lived bar per phase (rollout,
reward, eval). Off a terminal -- output redirected to a log file, a SLURM job -- bars would write a frame per update
into the file, so none is drawn: the per-epoch summary line (``RunBar.text``) carries the progress instead.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def interactive() -> bool:
    """Whether progress bars can redraw in place: stderr (where tqdm draws) is a terminal."""
    return sys.stderr.isatty()


def phase_bar(items: Iterable[T], desc: str, enabled: bool = True) -> Iterable[T]:
    """A nested bar over one phase's items (``rollout 3``, ``reward``, ``eval``): cleared when the phase ends, and
    not drawn at all off a terminal."""
    return tqdm(items, desc=desc, leave=False, disable=not (enabled and interactive()), dynamic_ncols=True)


def library_progress_bars(enabled: bool) -> None:
    """Turn the model-loading bars of diffusers and transformers (and hub downloads) on or off."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        (library.enable_progress_bar if enabled else library.disable_progress_bar)()


class RunBar:
    """The trainer's main bar, and the progress text of its per-epoch summary line.

    With a time budget (``budget_s`` > 0, in seconds of the run's training clock, ``clock_name`` "wall" or "cpu")
    the bar counts those seconds, so its ETA is the time left until the budget ends; without one it counts epochs
    up to ``epochs``. Its postfix holds the epoch count and the last evaluation. ``clock`` and ``epoch`` are where
    the run starts (non-zero when it resumes).
    """

    def __init__(self, desc: str, *, epochs: int, budget_s: float, clock_name: str, clock: float, epoch: int,
                 enabled: bool = True) -> None:
        self.budget_s, self.clock_name = budget_s, clock_name
        self.total = budget_s or epochs
        self.epoch, self.last_eval = epoch, None
        self.position = self._position(clock, epoch)
        self._started = (time.monotonic(), self.position)
        layout = None
        if budget_s:
            layout = ("{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} " + clock_name
                      + " s [{elapsed}<{remaining}{postfix}]")
        self.bar = tqdm(total=self.total, initial=self.position, desc=desc, bar_format=layout,
                        unit="s" if budget_s else "epoch", disable=not (enabled and interactive()),
                        dynamic_ncols=True)

    def _position(self, clock: float, epoch: int) -> float:
        """Where the bar stands: budget seconds used (capped at the budget), or epochs done."""
        return min(clock, self.budget_s) if self.budget_s else epoch

    def advance(self, clock: float, epoch: int, last_eval: float | None = None) -> None:
        """Move to the training clock ``clock`` after ``epoch`` epochs; ``last_eval`` is a new evaluation, if any."""
        if last_eval is not None:
            self.last_eval = last_eval
        score = f", eval {self.last_eval:.3f}" if self.last_eval is not None else ""
        self.bar.set_postfix_str(f"epoch {epoch}{score}", refresh=False)
        position = self._position(clock, epoch)
        if position > self.position:
            self.bar.update(position - self.position)  # draws the new postfix too
        else:
            self.bar.refresh()
        self.position, self.epoch = position, epoch

    def text(self, clock: float) -> str:
        """Progress for the summary line: ``train wall 120/240 s, 0:02:05 left`` with a budget, else ``train wall
        120 s``."""
        if not self.budget_s:
            return f"train {self.clock_name} {clock:.0f} s"
        return f"train {self.clock_name} {clock:.0f}/{self.budget_s:.0f} s, {self.eta()} left"

    def eta(self) -> str:
        """Time until the budget ends at the pace so far (evaluations included), as ``H:MM:SS``; ``?`` at first."""
        elapsed, done = time.monotonic() - self._started[0], self.position - self._started[1]
        if done <= 0:
            return "?"
        return tqdm.format_interval((self.total - self.position) * elapsed / done)

    def close(self) -> None:
        self.bar.close()
