"""Devices, processes and shardings: one place for the data-parallel layout.

The mesh has one axis, 'data', over every device of every process. Batches
are sharded along it; parameters and optimiser state are replicated.
"""

import os
from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Starts JAX's multi-process runtime when the run spans several processes.

  With an explicit coordinator address, process count and id (any cluster),
  those are used; on TPU pods, SLURM and Open MPI, jax.distributed detects
  them. A single process on one machine needs nothing and starts nothing.
  """
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError('multi-process flags: --coordinator_address, --num_processes and '
                       '--process_id must be given together (got '
                       f'{coordinator_address!r}, {num_processes!r}, {process_id!r})')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _multi_process_environment():
    jax.distributed.initialize()
  else:
    return
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def _multi_process_environment() -> bool:
  """True on a cluster that jax.distributed configures from its environment."""
  if os.environ.get('SLURM_NTASKS', '1') not in ('', '1'):
    return True
  if os.environ.get('OMPI_COMM_WORLD_SIZE', '1') not in ('', '1'):
    return True
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hosts.split(',') if h]) > 1 or 'MEGASCALE_COORDINATOR_ADDRESS' in os.environ


def create_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes, axis 'data'."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and optimiser state: a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: split along its first axis over 'data'."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def dispatch_one_at_a_time() -> bool:
  """True where computations must run one at a time: CPU with several devices.

  XLA:CPU may start the computations it is given out of order. With several
  processes, two of them can enter their gloo collectives in different orders
  and wait for each other forever. With several devices in one process, a
  computation that waits for a step's output can take a device's in-flight
  slot that the step itself still needs (seen under load: an all-reduce stuck
  with 2 of 4 participants until XLA aborts). GPU and TPU runtimes keep the
  order. Callers then wait for each batch and step before dispatching more.
  """
  return jax.default_backend() == 'cpu' and jax.device_count() > 1
