"""Which project callbacks become Keras's own progress output, decided without importing Keras.

Shared by `keras_baseline.train` (in the process that runs Keras) and `keras_baseline.jax_backend`
(in the parent of the keras-jax child, which must not import Keras).
"""

from __future__ import annotations

from fmnist import callbacks as fmnist_callbacks


def split_progress(callbacks) -> tuple[bool | None, object, list]:
    """(interactive, stream, others): the first `ProgressBar`'s redraw mode and stream, and the rest.

    `interactive` is None and `stream` None when there is no ProgressBar; otherwise `interactive`
    is the bar's setting, or whether its stream is a terminal when the bar leaves it to that.
    """
    bars = [cb for cb in callbacks if isinstance(cb, fmnist_callbacks.ProgressBar)]
    others = [cb for cb in callbacks if not isinstance(cb, fmnist_callbacks.ProgressBar)]
    if not bars:
        return None, None, others
    stream, interactive = bars[0].stream, bars[0].interactive
    if interactive is None:
        interactive = hasattr(stream, "isatty") and stream.isatty()
    return bool(interactive), stream, others


def keras_verbosity(callbacks) -> tuple[int, object, list]:
    """Keras's `verbose`, the stream to print to, and the project callbacks to forward.

    A `fmnist.callbacks.ProgressBar` among `callbacks` means "show progress": Keras then prints its
    own bar to that ProgressBar's stream (verbose=1, redrawn in place, on a terminal; verbose=2, one
    line per epoch, otherwise), and the project's bar is not forwarded, so nothing prints twice.
    """
    interactive, stream, others = split_progress(callbacks)
    if stream is None:
        return 0, None, others
    return (1 if interactive else 2), stream, others


def wants_batches(callbacks) -> bool:
    """Whether any callback overrides `on_batch_end` (forwarding batch logs costs a sync per step)."""
    return any(type(cb).on_batch_end is not fmnist_callbacks.Callback.on_batch_end for cb in callbacks)
