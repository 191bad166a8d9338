"""Device-resident input: uint8 datasets sharded over the mesh's 'data' axis.

Each split is decoded once (no TensorFlow needed for folders, digits, the
Tiny-ImageNet zip and array_record TFDS data); every process decodes all of it
and places the rows of its own devices. Splits are padded to a multiple of
the 'data' axis size and stored row-sharded over it. A batch is gathered by
global example index inside `shard_map`: every device contributes the rows it
holds (zeros elsewhere) and `psum_scatter` leaves each device its slice of the
batch (exact: one non-zero term per element). Train order: epoch e is
`permutation(fold_in(k_order, e))` of the training examples, step s of it
takes the s-th slice of B (the last partial batch is dropped); augmentation
draws bits for the whole global batch from `fold_in(k_augment, step)`.
Nothing depends on the number of devices or processes, and resuming at step k
is exact.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ssc_jax.data import augment
from ssc_jax.data import folder
from ssc_jax.data import partition
from ssc_jax.data import sources
from ssc_jax import sharding
from ssc_jax.data import specs
from ssc_jax.sharding import DATA_AXIS as AXIS


def _put_rows(array: np.ndarray, mesh, num_rows: int) -> jax.Array:
  """`array` padded with zero rows to `num_rows`, sharded over 'data'."""
  padded = np.zeros((num_rows,) + array.shape[1:], array.dtype)
  padded[:len(array)] = array
  return jax.make_array_from_callback(
      padded.shape, sharding.batch_sharded(mesh), lambda index: padded[index])


def _batch_fn(mesh, info, train: bool):
  """shard_map'ed (images, labels, index, key) -> batch-sharded batch.

  `index` (B,) holds global row indices, -1 for padding (eval); `key` draws
  the augmentation of the whole batch. Both are replicated.
  """

  def local(images, labels, index, key):
    rows = images.shape[0]
    local_index = index - jax.lax.axis_index(AXIS) * rows
    here = (local_index >= 0) & (local_index < rows)
    safe = jnp.where(here, local_index, 0)
    got_images = jnp.where(here[:, None, None, None], images[safe], 0)
    got_labels = jnp.where(here, labels[safe], 0)
    scatter = functools.partial(jax.lax.psum_scatter, axis_name=AXIS,
                                scatter_dimension=0, tiled=True)
    got_images, got_labels = scatter(got_images), scatter(got_labels)
    shard = got_labels.shape[0]
    mine = lambda x: jax.lax.dynamic_slice_in_dim(
        x, jax.lax.axis_index(AXIS) * shard, shard)
    batch = {'label': got_labels}
    if train:
      params = augment.random_params(key, index.shape[0], info)
      params = jax.tree.map(mine, params)
      batch['image'] = augment.train_transform(got_images, params, info)
    else:
      batch['image'] = augment.normalize(got_images, info.mean, info.std)
      batch['mask'] = mine(index >= 0)
    return batch

  return jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(), P()),
                       out_specs=P(AXIS))


class DeviceSplit:
  """One split held on the devices: uint8 images and int32 labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, mesh):
    self.size = len(labels)
    devices = mesh.shape[AXIS]
    rows = max(devices, -(-self.size // devices) * devices)
    self.images = _put_rows(images, mesh, rows)
    self.labels = _put_rows(labels.astype(np.int32), mesh, rows)


class DevicePipeline:
  """Global, batch-sharded batches gathered from device-resident splits."""

  def __init__(self, config, spec, mesh):
    self.info = specs.info(config.dataset)
    if not self.info.fits_on_device:
      raise ValueError(f"pipeline='device' does not support {config.dataset}; "
                       "use pipeline='tf_data'.")
    self.config = config
    self.spec = spec
    self.mesh = mesh
    devices = mesh.shape[AXIS]
    partition.local_batch_size(config.batch_size, 'batch_size', devices, 1)
    partition.local_batch_size(config.eval_batch_size, 'eval_batch_size',
                              devices, 1)
    self.steps_per_epoch = partition.train_steps_per_epoch(spec.num_train, config.batch_size)
    self.splits = self._load()
    key = jax.random.fold_in(jax.random.key(config.seed), 0x5D47A)
    self._order_key, self._augment_key = jax.random.split(key)
    self._train_fn = jax.jit(self._train_batch)
    self._eval_fn = jax.jit(self._eval_batch)
    self._perm_fn = jax.jit(
        lambda key, epoch: jax.random.permutation(
            jax.random.fold_in(key, epoch), self.splits['train'].size),
        out_shardings=sharding.replicated(mesh))

  def _load(self) -> dict[str, DeviceSplit]:
    config = self.config
    train_images, train_labels = sources.load_split(config, 'train')
    if config.full_train:
      held = np.zeros(len(train_labels), bool)
    elif config.data_source == 'folder':
      held = folder.held_out_mask(sources.folder_lists(config)['train'],
                                  config.validation_fraction)
    else:  # TFDS: the last examples of the stored order.
      held = np.arange(len(train_labels)) >= self.spec.num_train
    out = {
        'train': (train_images[~held], train_labels[~held]),
        'validation': (train_images[held], train_labels[held]),
    }
    if config.eval_test:  # config.eval_test=False: the test split is never read
      out['test'] = sources.load_split(config, 'test')
    for name, (_, labels) in out.items():
      expected = {'train': self.spec.num_train, 'test': self.spec.num_test,
                  'validation': self.spec.num_validation}[name]
      if len(labels) != expected:
        raise ValueError(f'{config.dataset} {name}: loaded {len(labels)} '
                         f'examples, dataset_spec says {expected}.')
    return {k: DeviceSplit(*v, self.mesh) for k, v in out.items()}

  def _train_batch(self, images, labels, perm, step, index_in_epoch):
    batch = self.config.batch_size
    index = jax.lax.dynamic_slice(perm, (index_in_epoch * batch,), (batch,))
    key = jax.random.fold_in(self._augment_key, step)
    return _batch_fn(self.mesh, self.info, True)(images, labels, index, key)

  def _eval_batch(self, images, labels, size, step):
    batch = self.config.eval_batch_size
    index = step * batch + jnp.arange(batch)
    index = jnp.where(index < size, index, -1)
    return _batch_fn(self.mesh, self.info, False)(images, labels, index,
                                                  self._augment_key)

  def train_batches(self, start_step: int = 0):
    train = self.splits['train']
    epoch, index = divmod(start_step, self.steps_per_epoch)
    step = start_step
    for e in itertools.count(epoch):
      perm = self._perm_fn(self._order_key, e)
      for i in range(index if e == epoch else 0, self.steps_per_epoch):
        yield self._train_fn(train.images, train.labels, perm,
                             np.int32(step), np.int32(i))
        step += 1

  def eval_batches(self, split: str):
    if split not in ('validation', 'test'):
      raise ValueError(f"split must be 'validation' or 'test', got {split!r}.")
    if split not in self.splits:
      raise ValueError('config.eval_test=False: the test split is not loaded.')
    data = self.splits[split]
    steps = -(-data.size // self.config.eval_batch_size)
    for s in range(steps):
      yield self._eval_fn(data.images, data.labels, np.int32(data.size),
                          np.int32(s))
