"""Input pipelines of ssc_jax, configured from the run's ml_collections config.

    spec = dataset_spec(config)           # sizes and shapes, decodes nothing
    data = create_input(config, mesh)     # one per process
    for batch in data.train_batches(start_step): ...   # infinite, resumable
    for batch in data.eval_batches('test'): ...        # padded, with 'mask'

`config.pipeline` picks the host tf.data pipelines ('tf_data', `tfdata.py`)
or the device-resident one ('device', `device.py`, no TensorFlow needed);
`config.data_source` picks TFDS ('tfds') or an image folder ('folder').
Batches are global jax.Arrays sharded along the batch over the mesh's 'data'
axis.
"""

import collections
from collections.abc import Iterator
import itertools

import jax

from ssc_jax import sharding
from ssc_jax.data.errors import DatasetNotFoundError
from ssc_jax.data.errors import UnreadableImageError
from ssc_jax.data.sources import dataset_spec
from ssc_jax.data.specs import DatasetSpec

__all__ = ['DatasetNotFoundError', 'DatasetSpec', 'Input', 'UnreadableImageError',
           'create_input', 'dataset_spec']


def _prefetch(iterator, size: int):
  """Keeps `size` items of `iterator` in flight (overlaps host-to-device)."""
  queue = collections.deque(itertools.islice(iterator, size))
  for item in iterator:
    queue.append(item)
    yield queue.popleft()
  yield from queue


class Input:
  """The input of one process: global batch-sharded arrays."""

  def __init__(self, config, mesh: jax.sharding.Mesh):
    self.spec: DatasetSpec = dataset_spec(config)
    self._config = config
    self._mesh = mesh
    self._sharding = sharding.batch_sharded(mesh)
    if config.pipeline == 'device':
      from ssc_jax.data import device  # pylint: disable=g-import-not-at-top
      self._device = device.DevicePipeline(config, self.spec, mesh)
      self._host = None
      self.steps_per_epoch = self._device.steps_per_epoch
    elif config.pipeline == 'tf_data':
      from ssc_jax.data import tfdata  # pylint: disable=g-import-not-at-top
      self._device = None
      self._host = tfdata.HostPipeline(
          config, self.spec, jax.process_index(), jax.process_count(),
          mesh.shape[sharding.DATA_AXIS])
      self.steps_per_epoch = self._host.steps_per_epoch
    else:
      raise ValueError("config.pipeline must be 'tf_data' or 'device', got "
                       f'{config.pipeline!r}.')

  def _to_global(self, batches):
    for batch in batches:
      yield {k: jax.make_array_from_process_local_data(self._sharding, v)
             for k, v in batch.items()}

  def train_batches(self, start_step: int = 0) -> Iterator[dict]:
    """Infinite train batches {'image', 'label'}, starting at `start_step`."""
    if self._device is not None:
      return self._device.train_batches(start_step)
    return _prefetch(self._to_global(self._host.train_numpy(start_step)),
                     self._config.prefetch_batches)

  def eval_batches(self, split: str) -> Iterator[dict]:
    """All of `split` ('validation' or 'test') once, with a 'mask'."""
    if self._device is not None:
      return self._device.eval_batches(split)
    return _prefetch(self._to_global(self._host.eval_numpy(split)),
                     self._config.prefetch_batches)


def create_input(config, mesh: jax.sharding.Mesh) -> Input:
  """The input pipeline `config` describes, feeding `mesh`."""
  return Input(config, mesh)
