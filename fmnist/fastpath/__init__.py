"""The fast path: what makes the JAX implementations train fast on XLA:CPU, kept apart from the
code a learner reads. Every piece computes what the readable path computes (tests compare them).

* `fmnist.fastpath.xla`: compiler options and the per-model settings (scan or loop, gradient slices).
* `fmnist.fastpath.layers`: the shift convolution and the first-max pool, both with custom VJPs.
* `fmnist.fastpath.steps`: the gradient in slices, and `make_run_steps` (data on the device,
  K steps per compiled call, donated buffers).
* `fmnist.fastpath.sharding`: data parallel over N devices (`make_run_steps(..., devices=N)`), and
  joining several processes into one run (`jax.distributed`).

Imports run one way: implementations -> fmnist.fastpath -> the rest of fmnist (the contract).
"""
