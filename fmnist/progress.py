"""A Keras-style progress bar, written once and used by the hand-rolled and Flax training loops.

    Epoch 1/5
    1719/1719 [==============================] - 2s 1ms/step - loss: 0.4958 - accuracy: 0.8245 - val_loss: 0.3925 - val_accuracy: 0.8590

On a terminal the line is redrawn in place while the epoch runs. When the output is not a terminal
(CI logs, pipes, files) carriage-return redraws would become thousands of lines, so only the final
line of each epoch is printed. The post's version printed `i/n` with a 0-based `i` (1874/1875 at the
end) and divided the running loss by the wrong count; here the count is of completed steps and the
metrics come from `fmnist.metrics.RunningMean`.
"""

from __future__ import annotations

import sys
import time

BAR_WIDTH = 30


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """`[=====>....]` for a fraction in [0, 1]; full is all `=`."""
    done = int(min(max(fraction, 0.0), 1.0) * width)
    if done >= width:
        return "[" + "=" * width + "]"
    return "[" + "=" * done + ">" + "." * (width - done - 1) + "]"


def format_duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds * 1000:.0f}ms"


def format_step_time(seconds_per_step: float) -> str:
    if seconds_per_step >= 1:
        return f"{seconds_per_step:.0f}s/step"
    if seconds_per_step >= 1e-3:
        return f"{seconds_per_step * 1e3:.0f}ms/step"
    return f"{seconds_per_step * 1e6:.0f}us/step"


class Progbar:
    """Progress of one epoch of `target` steps. Call `update(step, values)`, then `finish(values)`."""

    def __init__(self, target: int, stream=None, interactive: bool | None = None,
                 min_interval: float = 0.05):
        self.target = target
        self.stream = stream if stream is not None else sys.stdout
        if interactive is None:
            interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interactive = interactive
        self.min_interval = min_interval
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_len = 0

    def line(self, step: int, values: dict[str, float], elapsed: float) -> str:
        width = len(str(self.target))
        parts = [f"{step:>{width}}/{self.target} {bar(step / max(self.target, 1))}"]
        if step >= self.target:
            parts.append(f"{format_duration(elapsed)} {format_step_time(elapsed / max(step, 1))}")
        elif step:
            eta = elapsed / step * (self.target - step)
            parts.append(f"ETA: {format_duration(eta)}")
        parts += [f"{name}: {value:.4f}" for name, value in values.items()]
        return " - ".join(parts)

    def update(self, step: int, values: dict[str, float]) -> None:
        """Redraw (on a terminal, at most every `min_interval` seconds) after `step` completed steps."""
        if not self.interactive:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.min_interval and step < self.target:
            return
        self._last_draw = now
        self._draw(self.line(step, values, now - self.start), end="")

    def finish(self, values: dict[str, float]) -> None:
        """The epoch's final line, with validation metrics if `values` has them."""
        self._draw(self.line(self.target, values, time.perf_counter() - self.start), end="\n")

    def _draw(self, text: str, end: str) -> None:
        if self.interactive:
            pad = max(self._last_len - len(text), 0)
            self.stream.write("\r" + text + " " * pad + end)
            self._last_len = len(text)
        else:
            self.stream.write(text + end)
        self.stream.flush()
