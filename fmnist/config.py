"""What a training run is: one `TrainConfig`, shared by every implementation and the CLI."""

from __future__ import annotations

import dataclasses
import math

from fmnist import initializers, weights

# keras-jax: the keras_baseline code on Keras 3's JAX backend, run in a subprocess (the backend is
# fixed when Keras is first imported, and a process may already hold Keras on TensorFlow).
IMPLEMENTATIONS = ("handrolled", "flax", "nnx", "keras", "keras-jax")
OPTIMIZERS = ("adam", "sgd")
ADAM_CONVENTIONS = ("keras", "paper")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run. The same config means the same run in every implementation.

    adam_convention: where Adam's epsilon goes.
      "keras": epsilon-hat, theta -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)  (Keras's only form)
      "paper": Algorithm 1 of Kingma & Ba, theta -= lr * m_hat / (sqrt(v_hat) + eps)  (optax.adam)
    The command line defaults to "keras" so that `--impl keras` runs the same optimizer as the others.
    """

    model: str = "mlp"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0          # SGD only
    adam_convention: str = "keras"
    adam_eps: float = 1e-7
    b1: float = 0.9
    b2: float = 0.999
    init: str = "he_normal"
    seed: int = 0                  # initial weights and batch order
    val_size: int = 5000
    split_seed: int = 0            # which training examples are held out for validation
    train_limit: int | None = None  # use only the first N training examples (tests, quick looks)
    eval_batch_size: int = 1000
    steps_per_call: int = 100      # JAX: training steps per call of run_steps (compiled into one on the fast path)
    fast: bool = True              # JAX: train on the fast path (fmnist.fastpath); False: the readable path
    devices: int = 1               # JAX fast path: data parallel over this many devices (fmnist.fastpath.sharding)
    early_stopping_patience: int | None = None
    terminate_on_nan: bool = True  # stop at the first non-finite training loss, as keras.callbacks.TerminateOnNaN

    def __post_init__(self):
        weights.check_model_name(self.model)
        initializers.get(self.init)
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"learning rate must be positive and finite, got {self.lr}"),
            (0 <= self.seed < 2**32 and 0 <= self.split_seed < 2**32,
             f"seeds must be in [0, 2**32), got {self.seed} and {self.split_seed}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.adam_convention in ADAM_CONVENTIONS,
             f"adam convention must be one of {ADAM_CONVENTIONS}, got {self.adam_convention!r}"),
            (self.adam_eps >= 0 and math.isfinite(self.adam_eps),
             f"adam eps must be non-negative and finite, got {self.adam_eps}"),
            (0 <= self.b1 < 1 and 0 <= self.b2 < 1, "b1 and b2 must be in [0, 1)"),
            (self.val_size >= 0, f"validation size must be non-negative, got {self.val_size}"),
            (self.train_limit is None or self.train_limit >= 1, "train limit must be at least 1"),
            (self.eval_batch_size >= 1, "eval batch size must be at least 1"),
            (self.steps_per_call >= 1, "steps per call must be at least 1"),
            (self.devices >= 1, f"devices must be at least 1, got {self.devices}"),
            (self.batch_size % max(self.devices, 1) == 0, f"batch size {self.batch_size} must be a multiple of "
             f"--devices {self.devices} (each device takes an equal share of every batch's rows)"),
            (self.fast or self.devices == 1, "--devices N > 1 trains on the fast path only; drop --readable"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
