"""Fashion-MNIST in Keras 3 on TensorFlow: the independent reference the JAX implementations are checked against.

The same model and training code also runs on Keras's JAX backend (`--impl keras-jax`): see
`keras_baseline.jax_backend`, which runs it in a child process started with KERAS_BACKEND=jax.

Importing this package sets two environment variables, but only if they are unset, so a user's
choice wins:

    KERAS_BACKEND=tensorflow   Keras 3 picks its backend once, at `import keras`; this package is
                               the TensorFlow reference, so it must be set before that import.
                               (KERAS_BACKEND=jax is the other backend the package supports.)
    TF_CPP_MIN_LOG_LEVEL=1     hides TensorFlow's C++ INFO lines (e.g. the CPU-instructions notice)
                               and keeps its warnings and errors.

TensorFlow 2.21 prints one INFO banner that TF_CPP_MIN_LOG_LEVEL cannot hide, because it is logged
before absl's logging is initialised ("oneDNN custom operations are on ...", twice per start).
`import_keras()` drops exactly those lines and passes every other line of stderr through.
oneDNN itself stays on (TF's default): the reference is what a Keras user gets.

TensorFlow is imported by `keras_baseline.models`, `keras_baseline.train` and
`keras_baseline.fit_callbacks` on the TensorFlow backend, never by `fmnist`, `keras_baseline.rules`,
`keras_baseline.verbosity` or the parent side of keras-jax (`keras_baseline.jax_backend`,
`keras_baseline.jax_parity`, `keras_baseline.child_launcher`).
"""

import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# Substrings of the only stderr lines import_keras() removes (both are INFO, not problems).
IMPORT_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
)


def import_keras():
    """`import keras` (which imports TensorFlow) with the known import banner filtered from stderr."""
    if "keras" in sys.modules:
        import keras
        return keras
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)  # C++ logging writes to fd 2 directly, so redirect the fd
        try:
            import keras
        finally:
            sys.stderr.flush()  # Python-level warnings written during the import go to the capture too
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(noise in line for noise in IMPORT_NOISE)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
    return keras
