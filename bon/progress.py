"""A stage's progress bar on stderr, moved by the stage while it works on a batch.

The runner opens one `Progress` per stage run and tells it where each batch starts and ends;
the stage (`Stage.watch`) reports as it goes: the generator the tokens it decodes (live, through
`Engine.decoding`, then the true count when a call returns), the reranker the candidates each
scorer has scored and the tokens it read. So a bar over a 32-sequence batch moves while the
batch decodes instead of sitting at 0 until it is written. Within a batch the bar never passes
the batch's end (a batch retried record by record reports twice), and it lands there when the
batch is done whatever the stage reported.
"""

from __future__ import annotations

import time

from tqdm import tqdm

REFRESH_SECONDS = 0.5
"""Least time between two redraws of the token counts."""


class Progress:
    """A tqdm bar counting `unit`s (records, or candidate scores), with the tokens spent and
    their rate as its postfix once some are reported. `quiet` turns it off."""

    def __init__(self, total: int | None, desc: str, unit: str, quiet: bool) -> None:
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True)
        self.tokens = 0
        """Tokens reported by finished calls."""
        self._live = 0
        self._ceiling = 0
        self._started: float | None = None
        self._shown = 0.0

    def start_batch(self, units: int) -> None:
        """A batch worth `units` starts."""
        self._ceiling = self.bar.n + units

    def advance(self, units: int) -> None:
        """`units` of the current batch are done (never past the batch's end)."""
        step = min(units, self._ceiling - self.bar.n)
        if step > 0:
            self.bar.update(step)

    def end_batch(self) -> None:
        """The current batch is done: the bar moves to its end."""
        if self._ceiling > self.bar.n:
            self.bar.update(self._ceiling - self.bar.n)

    def clock(self) -> None:
        """Start the token rate's clock, if not started (call it when the work starts, after
        loading a model)."""
        if self._started is None:
            self._started = time.monotonic()

    def decoding(self, tokens: int) -> None:
        """About `tokens` more are being decoded in the call in flight (an estimate)."""
        self._live += tokens
        self._show()

    def spent(self, tokens: int) -> None:
        """A call finished having spent `tokens` (replaces its live estimate)."""
        self.tokens += tokens
        self._live = 0
        self._show(force=True)

    def _show(self, force: bool = False) -> None:
        if self.bar.disable:
            return
        now = time.monotonic()
        if not force and now - self._shown < REFRESH_SECONDS:
            return
        self._shown = now
        count = self.tokens + self._live
        text = f"{_short(count)} tok"
        if self._started is not None and now - self._started > 0.05:
            text += f", {_short(count / (now - self._started))} tok/s"
        self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        self._live = 0
        if self.tokens:
            self._show(force=True)
        self.bar.close()


def _short(value: float) -> str:
    """1234 -> "1.2k", 2_500_000 -> "2.5M", 87 -> "87"."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:.0f}"
