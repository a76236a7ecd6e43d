"""Data parallel training over N devices, with JAX's own sharding: the one place it happens.

    dp = DataParallel(devices=4)        # a 1-D mesh "data" over the first 4 devices
    x_all = dp.replicate(x_train)       # a copy of the training set on every device
    state = dp.replicate(state)         # parameters and optimizer state: a copy on every device
    idx = dp.batch_indices(batches)     # (K, B) indices, each batch's B rows split over the devices
    images = dp.rows(x_all[idx_k])      # inside the compiled step: the batch's rows stay split

`fmnist.fastpath.steps.make_run_steps(..., devices=N)` uses it; nothing else changes. Under
`jax.jit`, with the batch split by rows and the parameters replicated, XLA's SPMD partitioner turns
the one program into N: each device computes the forward pass, the loss and the gradient of its own
B/N rows, and the compiler inserts the all-reduce that sums the partial gradients (and the loss and
correct-count sums) across the devices before the optimizer update, which every device then applies
to its own copy. No hand-written `psum`: the step is the single-device step, unchanged, and the
compiler derives the communication from the shardings (the mesh axis is `AxisType.Auto`, so it is
free to choose; `jax.shard_map` would make us write the per-device program and its `psum` by hand,
which only pays when the compiler's choice is wrong, and here it is the textbook one).

The mean loss stays the mean over the whole batch: each device's partial sums are added, then
divided by B, so the numbers are the single-device ones up to the order of the additions (float32
rounding; tests/fastpath/test_sharding.py measures how much, and how Adam grows it).

Batch sizes: B must be a multiple of N (TrainConfig refuses otherwise). The epoch's partial last
batch (when the set size is not a multiple of B) is split over the devices when its size is a
multiple of N too, and otherwise computed whole on every device (replicated: every device does the
same work and gets the same update). Padding it to a multiple of N would need a mask in every loss
and a mean over the real rows only; computing it replicated is exact and costs one small batch.

What is replicated, and why: the training set (N copies; batches are drawn at random from all of
it, so no device can hold only "its" examples), the state, and evaluation, which the
implementations run as before on the replicated parameters, so every device computes the whole
validation batch (one device's numbers exactly; on real accelerators no slower than one device, on
forced CPU devices N times the work). The CNN's gradient is one piece per device, not 2 slices
(`fmnist.fastpath.xla.fast_path(model, devices)`).

More than one process (`initialize`): `jax.distributed.initialize` joins the processes into one
runtime; `jax.devices()` then lists every process's devices, each process feeds the same host
arrays, and the same compiled program runs on all of them (CPU collectives go through gloo).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["AXIS", "DataParallel", "check_devices", "initialize"]

AXIS = "data"

HOW_TO_GET_CPU_DEVICES = (
    "on CPU, start Python with XLA_FLAGS=--xla_force_host_platform_device_count=N in the environment "
    "(or JAX_NUM_CPU_DEVICES=N, jax.config.update('jax_num_cpu_devices', N)) before JAX starts")


def check_devices(devices: int) -> None:
    """ValueError unless this run can use `devices` devices (in a multi-process run: all of them)."""
    available = jax.device_count()
    if devices > available:
        raise ValueError(f"--devices {devices} asks for more devices than JAX sees ({available} "
                         f"{jax.default_backend()} device{'s' * (available != 1)}); {HOW_TO_GET_CPU_DEVICES}")
    if jax.process_count() > 1 and devices != available:
        raise ValueError(f"a run of {jax.process_count()} processes trains on every process's devices: "
                         f"--devices must be {available} (jax.device_count()), got {devices}")


class DataParallel:
    """The mesh and the two shardings of data parallel training over the first `devices` devices."""

    def __init__(self, devices: int):
        check_devices(devices)
        self.devices = devices
        self.mesh = jax.make_mesh((devices,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                                  devices=jax.devices()[:devices])
        self.replicated = NamedSharding(self.mesh, PartitionSpec())   # a whole copy on every device
        self.by_rows = NamedSharding(self.mesh, PartitionSpec(AXIS))  # rows split over the devices

    def divides(self, rows: int) -> bool:
        return rows % self.devices == 0

    def replicate(self, tree):
        """`tree`'s arrays with a whole copy on every device (those already so are left alone)."""
        def put(a):
            if isinstance(a, jax.Array) and a.sharding == self.replicated:
                return a
            return self.put(np.asarray(a), self.replicated)
        return jax.tree.map(put, tree)

    @staticmethod
    def put(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
        """One array over the mesh from a host array every process holds alike: each process fills
        its own devices' pieces (`jax.device_put` would also work, but across processes it first
        checks with a collective that every process passed the same value, on every call)."""
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def batch_indices(self, batches: np.ndarray) -> jax.Array:
        """(K, B) or (B,) batch indices on the devices: each batch's B indices split over them when N
        divides B, else whole on every device (the partial last batch; see the module docstring)."""
        split = (None,) * (batches.ndim - 1) + (AXIS,)
        spec = PartitionSpec(*split) if self.divides(batches.shape[-1]) else PartitionSpec()
        return self.put(batches, NamedSharding(self.mesh, spec))

    def rows(self, x):
        """Inside a compiled step: `x`'s rows split over the devices (when N divides them)."""
        if not self.divides(x.shape[0]):
            return jax.lax.with_sharding_constraint(x, self.replicated)
        return jax.lax.with_sharding_constraint(x, self.by_rows)


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join this process to a run of `num_processes` (`jax.distributed.initialize`); call it before
    anything else touches JAX. What a cluster launcher sets: one process per host, the same
    `coordinator` HOST:PORT (process 0's address) for all, each its own `process_id`."""
    if num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    # CPU collectives across processes: gloo over TCP (the default in jax 0.10.2 and 0.12.0.1; set
    # here so that an older default, none, cannot leave the processes unable to add their gradients).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
