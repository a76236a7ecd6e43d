"""Fashion-MNIST in hand-rolled JAX: the blog post's pytree layers, grown up.

Modules (each small and self-contained):

* `handrolled.functional`: relu, softmax, log_softmax, logsumexp, rescale_image, flatten, one_hot
* `handrolled.losses`: cross-entropy on probabilities and on logits, num_correct, accuracy
* `handrolled.conv`: NHWC/HWIO convolution (lax, im2col) and max pooling (reshape, reduce_window);
  "shift" and "first_max" are the fast path's layers (`fmnist.fastpath.layers`)
* `handrolled.layers`: pytree layers Linear, Conv2D, MaxPool2D, Flatten, Function, Sequential
* `handrolled.models`: the mlp and cnn architectures, and canonical-weights conversion
* `handrolled.optimizers`: SGD and Adam, pure (init/update, jittable) and stateful (step)
* `handrolled.train`: the project's training step, evaluation and `train_and_evaluate`
* `handrolled.post`: the blog post's own API, `train`, `evaluate_loader`, `TrainHistory`
* `handrolled.benchmark`: times the lax/im2col convolutions and reshape/reduce_window pools

The training modules are not imported here: `from handrolled.post import train`.
"""

from handrolled.functional import flatten, log_softmax, logsumexp, one_hot, relu, rescale_image, softmax
from handrolled.layers import Conv2D, Flatten, Function, Linear, MaxPool2D, Sequential
from handrolled.losses import (
    PROB_EPS,
    accuracy,
    cross_entropy,
    cross_entropy_with_logits,
    num_correct,
    sparse_cross_entropy,
    sparse_cross_entropy_with_logits,
)
from handrolled.models import build_model, cnn, from_weights, mlp, to_weights
from handrolled.optimizers import SGD, Adam, AdamState, SGDState

__all__ = [
    # functional
    "relu", "softmax", "log_softmax", "logsumexp", "rescale_image", "flatten", "one_hot",
    # layers
    "Linear", "Conv2D", "MaxPool2D", "Flatten", "Function", "Sequential",
    # losses and metrics
    "PROB_EPS", "cross_entropy", "sparse_cross_entropy", "cross_entropy_with_logits",
    "sparse_cross_entropy_with_logits", "num_correct", "accuracy",
    # models
    "mlp", "cnn", "build_model", "from_weights", "to_weights",
    # optimizers
    "SGD", "Adam", "SGDState", "AdamState",
]

# The post's data classes, defined once in the shared data module.
from fmnist.data import Dataloader, Dataset  # noqa: E402

__all__ += ["Dataset", "Dataloader"]
