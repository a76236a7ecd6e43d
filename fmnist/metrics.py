"""Epoch metrics with one meaning in every implementation.

Training loss and accuracy are Keras's: running means over the epoch of each batch's loss and
accuracy *before* that batch's update, weighted by batch size. (The post divided the running sum of
batch losses by the number of batches of the whole epoch, so its loss grew during an epoch.)
Validation and test metrics are full passes over every example, nothing dropped.
"""

from __future__ import annotations


class RunningMean:
    """Sample-weighted running mean of loss and accuracy over one epoch (accumulated in float64)."""

    def __init__(self):
        self.loss_sum = 0.0  # sum over batches of (mean batch loss * batch size)
        self.correct = 0
        self.count = 0

    def update(self, loss_sum: float, correct: int, count: int) -> None:
        """Add batches holding `count` examples whose losses sum to `loss_sum`."""
        self.loss_sum += float(loss_sum)
        self.correct += int(correct)
        self.count += int(count)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    def result(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy}
