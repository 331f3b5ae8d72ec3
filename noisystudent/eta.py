"""How far a whole run is, and when it will finish: arithmetic only (no clock, no files).

A run's work is its models (fold x round), each weighted by what training it
costs: epochs x training images. Work is credited in two ways:

- *measured*: epochs this process trained, with the seconds they took since the
  last measured credit (so the time spent predicting and pseudo-labelling
  between models is part of the rate);
- *unmeasured*: work done without this process's clock: epochs a resumed model
  had already trained, models finished before this session or by another
  process that joined the run, epochs early stopping skipped.

Both count as done; only measured work sets the rate, so a resume or a joined
process does not make the run look faster than this process trains.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping


def model_work(epochs: int, images: int) -> float:
    """The work of training one model: epochs x training images (at least 1, so no model is free)."""
    return float(max(1, epochs) * max(1, images))


class RunEta:
    """Credited work per model, the rate measured by this process, and the time left.

    Args:
        weights: Work of every model of the run (e.g. ``{(fold, round): model_work(...)}``).

    Example:
        >>> eta = RunEta({"teacher": 1000.0, "student": 3000.0})
        >>> eta.credit("teacher", 1.0)  # finished before this session: done, not in the rate
        >>> eta.start(now=0.0)
        >>> eta.credit("student", 0.1, now=30.0)  # 300 units in 30 s
        >>> eta.fraction_done(), eta.rate(), eta.eta_seconds()
        (0.325, 10.0, 270.0)
    """

    def __init__(self, weights: Mapping[Hashable, float]) -> None:
        self.weights = {key: float(weight) for key, weight in weights.items()}
        self.credited = {key: 0.0 for key in self.weights}  # fraction of each model counted as done
        self.measured_work = 0.0
        self.measured_seconds = 0.0
        self.mark: float | None = None  # when the last measured interval ended (None: this process has not started)

    def start(self, now: float) -> None:
        """This process begins training: measured intervals start here (once; later calls do nothing)."""
        if self.mark is None:
            self.mark = now

    def credit(self, key: Hashable, fraction: float, now: float | None = None) -> None:
        """Model ``key`` is ``fraction`` done; measured (by this process, up to ``now``) or not (``now`` None).

        A fraction below what is already credited changes nothing.
        """
        if key not in self.weights:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        gained = max(0.0, fraction - self.credited[key]) * self.weights[key]
        self.credited[key] = max(self.credited[key], fraction)
        if now is not None and self.mark is not None:
            self.measured_work += gained
            self.measured_seconds += max(0.0, now - self.mark)
            self.mark = now

    def total(self) -> float:
        return sum(self.weights.values())

    def done(self) -> float:
        return sum(self.weights[key] * fraction for key, fraction in self.credited.items())

    def fraction_done(self) -> float:
        """Done work over all work, 0 to 1 (1 for a run without work)."""
        total = self.total()
        return self.done() / total if total else 1.0

    def models_done(self) -> int:
        return sum(1 for fraction in self.credited.values() if fraction >= 1.0)

    def rate(self) -> float | None:
        """Work per second this process measured; None before its first measured credit."""
        if self.measured_work <= 0 or self.measured_seconds <= 0:
            return None
        return self.measured_work / self.measured_seconds

    def eta_seconds(self, workers: int = 1) -> float | None:
        """Seconds until all work is done, if ``workers`` processes each go at this process's rate; None: unknown.

        0 once everything is done.
        """
        remaining = max(0.0, self.total() - self.done())
        if remaining == 0:
            return 0.0
        rate = self.rate()
        return None if rate is None else remaining / (rate * max(1, workers))
