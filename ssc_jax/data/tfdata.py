"""tf.data pipelines on the host: per-process numpy batches.

TensorFlow is imported lazily so `import ssc_jax.data` works without it.

Order and resumption. Every process reads its own contiguous part of a split
(`partition.process_range`). Train:
  * folder source: each epoch is an exact permutation of the process's files,
    drawn by numpy from (seed, epoch, process). Starting at step k skips
    (k mod steps_per_epoch) * local_batch file INDICES: no I/O, free.
  * TFDS source: files are shuffled with `ReadConfig(shuffle_seed)` and
    examples through a `shuffle_buffer_size` buffer seeded by (seed, epoch,
    process). Starting at step k re-reads (without decoding: images are
    decoded after the skip) the first (k mod steps_per_epoch) * local_batch
    records of the epoch, i.e. at most one epoch of records of the process.
Augmentation draws stateless random numbers from (seed, process, position of
the example in the stream), so it too is the same after a restart. Every epoch
yields exactly `steps_per_epoch` batches (the remainder is dropped).
"""

import itertools

import numpy as np

from ssc_jax.data import folder
from ssc_jax.data import partition
from ssc_jax.data import sources
from ssc_jax.data import specs

_INT32_MAX = 2**31 - 1
# ImageNet eval: shorter side resized to this, then the central 224 x 224.
EVAL_RESIZE = 256


def _seed(*parts: int) -> int:
  """A 31-bit seed mixed from integers (stable across runs and versions)."""
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0]
             & _INT32_MAX)


def _tf():
  """TensorFlow, or an error that says how to get it or avoid it."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError("config.pipeline='tf_data' needs TensorFlow: pip install "
                      "'ssc_jax[tf]', or use config.pipeline='device' for datasets that "
                      'fit in accelerator memory') from error
  return tf


def _decode(encoded, channels: int):
  tf = _tf()
  return tf.io.decode_image(encoded, channels=channels, expand_animations=False)


def _crop_flip(image, seed, info):
  tf = _tf()
  p = info.crop_padding
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = tf.pad(image, [[p, p], [p, p], [0, 0]])
  image = tf.image.stateless_random_crop(image, info.raw_shape, seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _inception_crop(encoded, seed, size: int):
  """Inception-style random resized crop (area 8-100%, ratio 3/4-4/3), flip.

  When 10 attempts find no window in those ranges (sample_distorted_bounding_box
  then returns the whole image), takes the eval centre crop instead (the central
  224/256 of the shorter side), as the flax ImageNet example does.
  """
  tf = _tf()
  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.image.extract_jpeg_shape(encoded)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0., 0., 1., 1.], shape=[1, 1, 4]),
      seed=box_seed, min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  y, x, _ = tf.unstack(begin)
  h, w, _ = tf.unstack(crop_size)

  def random_crop():
    image = tf.image.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=3)
    return tf.image.resize(image, [size, size], method='bilinear', antialias=True)

  failed = tf.logical_and(tf.equal(h, shape[0]), tf.equal(w, shape[1]))
  image = tf.cond(failed, lambda: _resize_centre_crop(encoded, EVAL_RESIZE, size),
                  random_crop)
  image = tf.ensure_shape(image, [size, size, 3])
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _resize_centre_crop(encoded, resize: int, size: int):
  """Resize the shorter side to `resize`, then take the central size x size."""
  tf = _tf()
  image = _decode(encoded, 3)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize / tf.reduce_min(hw)
  new_hw = tf.cast(tf.round(hw * scale), tf.int32)
  image = tf.image.resize(image, new_hw, method='bilinear', antialias=True)
  top = (new_hw[0] - size) // 2
  left = (new_hw[1] - size) // 2
  return image[top:top + size, left:left + size]


def _normalize(image, info):
  tf = _tf()
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(info.mean)) / tf.constant(info.std)


class HostPipeline:
  """Per-process numpy batches of one configured dataset.

  Args:
    config: the run's config.
    spec: `sources.dataset_spec(config)`.
    process_index, process_count: this process and how many there are.
    num_devices: devices along the mesh's 'data' axis (divisibility check).
  """

  def __init__(self, config, spec, process_index: int, process_count: int,
               num_devices: int):
    self.config = config
    self.spec = spec
    self.info = specs.info(config.dataset)
    self.process_index = process_index
    self.process_count = process_count
    self.batch = partition.local_batch_size(
        config.batch_size, 'batch_size', num_devices, process_count)
    self.eval_batch = partition.local_batch_size(
        config.eval_batch_size, 'eval_batch_size', num_devices, process_count)
    self.steps_per_epoch = partition.train_steps_per_epoch(spec.num_train, config.batch_size)
    self._files = None
    self._builder = None
    if config.data_source == 'folder':
      self._files = self._folder_splits()
    else:
      self._builder = sources.tfds_builder(config)

  # Sources ------------------------------------------------------------------

  def _folder_splits(self) -> dict[str, folder.FileList]:
    lists = sources.folder_lists(self.config)
    train, test = lists['train'], lists['test']
    if self.config.full_train:
      return {'train': train, 'validation': train.take([]), 'test': test}
    held = folder.held_out_mask(train, self.config.validation_fraction)
    return {'train': train.take(np.flatnonzero(~held)),
            'validation': train.take(np.flatnonzero(held)), 'test': test}

  def _split_range(self, split: str) -> tuple[str, int, int]:
    """(TFDS split, start, stop) of `split` in that TFDS split."""
    n_train = self.spec.num_train
    if split == 'train':
      return 'train', 0, n_train
    if split == 'validation':
      return 'train', n_train, n_train + self.spec.num_validation
    return self.info.test_split, 0, self.spec.num_test

  def _process_part(self, split: str) -> tuple[str, int, int]:
    """This process's part of `split` as (source split, start, stop)."""
    source, start, stop = self._split_range(split)
    lo, hi = partition.process_range(stop - start, self.process_index,
                                    self.process_count)
    return source, start + lo, start + hi

  def _examples(self, split: str, epoch: int | None):
    """tf.data of (encoded image or path, label): the process's part of
    `split`; for train, in the order of `epoch` and cut to the epoch length."""
    tf = _tf()
    take = self.steps_per_epoch * self.batch
    seed = _seed(self.config.seed, epoch or 0, self.process_index)
    if self._files is not None:
      files = self._files[split]
      index = np.arange(len(files))
      if epoch is not None:  # one permutation for all processes, then each its part
        index = np.random.default_rng(_seed(self.config.seed, epoch)).permutation(index)
      lo, hi = partition.process_range(len(files), self.process_index,
                                      self.process_count)
      index = index[lo:hi] if epoch is None else index[lo:hi][:take]
      paths = np.asarray([files.paths[i].encode() for i in index], dtype=object)
      return tf.data.Dataset.from_tensor_slices((paths, files.labels[index]))
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    source, lo, hi = self._process_part(split)
    options = tf.data.Options()
    options.deterministic = True
    read_config = tfds.ReadConfig(shuffle_seed=seed, options=options,
                                  try_autocache=False)
    ds = self._builder.as_dataset(
        split=f'{source}[{lo}:{hi}]',
        shuffle_files=(epoch is not None
                       and not self._builder.info.disable_shuffling),
        read_config=read_config,
        decoders={'image': tfds.decode.SkipDecoding()})
    if epoch is not None:
      ds = ds.shuffle(self.config.shuffle_buffer_size, seed=seed,
                      reshuffle_each_iteration=False).take(take)
    return ds.map(lambda ex: (ex['image'], ex['label']))

  def _load(self, source):
    """Encoded image bytes from a path (folder) or the bytes themselves."""
    tf = _tf()
    return tf.io.read_file(source) if self._files is not None else source

  # Train --------------------------------------------------------------------

  def _train_epoch(self, epoch: int, skip_batches: int):
    tf = _tf()
    info = self.info
    aug_seed = _seed(self.config.seed, self.process_index, 1)
    first = epoch * self.steps_per_epoch * self.batch  # Stream position.
    ds = self._examples('train', epoch).enumerate(first)
    ds = ds.skip(skip_batches * self.batch)

    def preprocess(position, example):
      source, label = example
      seed = tf.stack([tf.constant(aug_seed, tf.int64), position])
      encoded = self._load(source)
      if info.augment == 'inception':
        image = _inception_crop(encoded, seed, info.input_shape[0])
      else:
        image = tf.ensure_shape(_decode(encoded, info.raw_shape[-1]),
                                info.raw_shape)
        if info.augment == 'crop_flip':
          image = _crop_flip(image, seed, info)
      return {'image': _normalize(image, info),
              'label': tf.cast(label, tf.int32)}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(self.batch, drop_remainder=True)
    return ds.prefetch(max(self.config.prefetch_batches, 1))

  def train_numpy(self, start_step: int = 0):
    """Infinite iterator of local train batches from global step `start_step`."""
    epoch, skip = divmod(start_step, self.steps_per_epoch)
    for e in itertools.count(epoch):
      yield from self._iterate(self._train_epoch(e, skip if e == epoch else 0),
                               'train')

  # Eval ---------------------------------------------------------------------

  def num_examples(self, split: str) -> int:
    return {'train': self.spec.num_train, 'validation': self.spec.num_validation,
            'test': self.spec.num_test}[split]

  def eval_numpy(self, split: str):
    """Local eval batches of `split`, padded and masked; every process yields
    `partition.eval_steps` batches, together covering each example once."""
    if split not in ('validation', 'test'):
      raise ValueError(f"split must be 'validation' or 'test', got {split!r}.")
    tf = _tf()
    info = self.info
    n = self.num_examples(split)
    steps = partition.eval_steps(n, self.config.eval_batch_size,
                                self.process_count) if n else 0

    def preprocess(source, label):
      encoded = self._load(source)
      if info.augment == 'inception':
        image = _resize_centre_crop(encoded, EVAL_RESIZE, info.input_shape[0])
      else:
        image = tf.ensure_shape(_decode(encoded, info.raw_shape[-1]),
                                info.raw_shape)
      return {'image': _normalize(image, info),
              'label': tf.cast(label, tf.int32)}

    ds = self._examples(split, None) if n else None
    count = 0
    if ds is not None:
      ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)
      ds = ds.batch(self.eval_batch).prefetch(
          max(self.config.prefetch_batches, 1))
      for batch in self._iterate(ds, split):
        yield self._pad(batch)
        count += 1
    if count > steps:
      raise RuntimeError(f'{split} yielded {count} batches, expected {steps}.')
    shape = (self.eval_batch,) + tuple(info.input_shape)
    for _ in range(steps - count):
      yield {'image': np.zeros(shape, np.float32),
             'label': np.zeros(self.eval_batch, np.int32),
             'mask': np.zeros(self.eval_batch, bool)}

  def _pad(self, batch):
    real = len(batch['label'])
    pad = self.eval_batch - real
    out = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
           for k, v in batch.items()}
    out['mask'] = np.arange(self.eval_batch) < real
    return out

  def _iterate(self, ds, split: str):
    """numpy batches of `ds`; a decoding error names the unreadable file."""
    tf = _tf()
    iterator = ds.as_numpy_iterator()
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      except tf.errors.InvalidArgumentError:
        if self._files is not None:
          for path in self._files[split].paths:  # Find the culprit.
            folder.decode(path, channels=self.info.raw_shape[-1])
        raise
      yield batch

