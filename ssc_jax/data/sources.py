"""Where the examples come from: TFDS builders or the image-folder layout.

Everything here works without TensorFlow except `tfds_builder(...).as_dataset`
and reading TFDS TFRecords into memory (`load_split` falls back to it only
when TFDS has no array_record data source).
"""

import os

import numpy as np

from ssc_jax.data import errors
from ssc_jax.data import folder
from ssc_jax.data import specs

# The archive TFDS expects in its manual directory (<data_dir>/downloads/manual).
MANUAL_FILES = {
    'tiny_imagenet': 'tiny-imagenet-200.zip',
    'imagenet2012': 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar',
}


def not_found(config, where: str,
              detail: str = '') -> errors.DatasetNotFoundError:
  """A DatasetNotFoundError naming the dataset, where it looked and the fixes."""
  name = config.dataset
  ways = [f'run `tfds build {specs.info(name).tfds_name}` (or tfds.load(..., '
          'download=True)) on a machine with internet and copy its data_dir']
  if name in MANUAL_FILES:
    ways = [f'put {MANUAL_FILES[name]} into <data_dir>/downloads/manual/ '
            f'and run `tfds build {name}` (or tfds.load(..., download=True))']
  if name == 'digits':
    ways = ['it builds offline from scikit-learn: check that scikit-learn is '
            'installed and data_dir is writable']
  ways.append("set config.data_source='folder' and config.folder_dir to a "
              'directory holding <split>/<class>/<image> (splits train, test)')
  msg = (f'Dataset {name!r} not found in {where}'
         + (f' ({detail})' if detail else '') + '. To provide it: '
         + '; or '.join(ways) + '.')
  return errors.DatasetNotFoundError(msg)


def data_dir(config) -> str | None:
  return config.data_dir or None


def _where(config) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return f'TFDS data_dir {config.data_dir or tfds.core.constants.DATA_DIR!r}'


def register_builders():
  """Imports the package's TFDS builders so TFDS knows their names."""
  from ssc_jax.data import digits  # pylint: disable=g-import-not-at-top,unused-import
  from ssc_jax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top,unused-import


def tfds_builder(config):
  """The TFDS builder of `config.dataset`; raises if it is not prepared.

  `digits` is built on first use (offline, from scikit-learn).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  register_builders()
  name = specs.info(config.dataset).tfds_name
  try:
    builder = tfds.builder(name, data_dir=data_dir(config))
  except Exception as e:  # TFDS raises several types for unknown data.
    raise not_found(config, _where(config), str(e)) from e
  if not builder.is_prepared():
    if name == 'digits':
      builder.download_and_prepare()
    else:
      raise not_found(config, _where(config),
                      f'no prepared {name} version {builder.version}')
  return builder


def folder_root(config) -> str:
  root = config.folder_dir
  if not root or not os.path.isdir(os.path.join(root, 'train')):
    raise not_found(
        config, f'folder_dir {root!r}',
        'expected <folder_dir>/train/<class>/<image> and '
        '<folder_dir>/test/<class>/<image>')
  return root


def folder_lists(config) -> dict[str, folder.FileList]:
  """File lists of the official 'train' and 'test' splits of the folder."""
  root = folder_root(config)
  lists = {s: folder.list_split(root, s) for s in ('train', 'test')}
  num_classes = specs.info(config.dataset).num_classes
  if len(lists['train'].class_names) != num_classes:
    raise ValueError(
        f'{root}/train has {len(lists["train"].class_names)} class folders; '
        f'{config.dataset} has {num_classes} classes.')
  for split, files in lists.items():
    if not len(files):
      raise not_found(config, f'folder_dir {root!r}',
                      f'no images under {root}/{split}/<class>/')
  return lists


def counts(config) -> tuple[int, int, list[int] | None]:
  """(train size, test size, per-class train sizes for folders else None)."""
  info = specs.info(config.dataset)
  if config.data_source == 'folder':
    lists = folder_lists(config)
    return (len(lists['train']), len(lists['test']),
            folder.class_sizes(lists['train']))
  if config.data_source != 'tfds':
    raise ValueError(f"data_source must be 'tfds' or 'folder', "
                     f'got {config.data_source!r}.')
  if config.dataset != 'digits':
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    register_builders()
    try:
      builder = tfds.builder(info.tfds_name, data_dir=data_dir(config))
      if builder.is_prepared():
        splits = builder.info.splits
        return (splits['train'].num_examples,
                splits[info.test_split].num_examples, None)
    except Exception:  # pylint: disable=broad-except
      pass  # Unprepared or unknown here: the sizes of the official release.
  return info.num_train, info.num_test, None


def dataset_spec(config) -> specs.DatasetSpec:
  """The split sizes and shapes of `config` (cheap: decodes no images)."""
  ds_info = specs.info(config.dataset)
  num_train_total, num_test, class_sizes = counts(config)
  if config.full_train:
    num_validation = 0
  elif class_sizes is not None:  # Folder layout: held out per class.
    num_validation = sum(specs.num_held_out(c, config.validation_fraction)
                         for c in class_sizes)
  else:
    num_validation = specs.num_held_out(num_train_total,
                                        config.validation_fraction)
  return specs.DatasetSpec(
      name=config.dataset, num_classes=ds_info.num_classes,
      image_shape=ds_info.input_shape,
      num_train=num_train_total - num_validation,
      num_validation=num_validation, num_test=num_test)


def _load_tfds(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes a whole TFDS split into memory (array_record source if any)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds_builder(config)
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except  # Not array_record.
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise ImportError(
          f'Reading {builder.name} from {_where(config)} without TensorFlow '
          'needs it prepared as array_record (`tfds build '
          f'{builder.name} --file_format=array_record`); or install '
          "tensorflow, or use data_source='folder'.") from e
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return data['image'], data['label'].astype(np.int32)
  examples = source.__getitems__(range(len(source)))  # Batched read.
  images = np.stack([np.asarray(e['image'], np.uint8) for e in examples])
  return images, np.asarray([e['label'] for e in examples], np.int32)


def load_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images (N, H, W, C), int32 labels) of official 'train' or 'test'.

  Order: folders in (class, file name) order; TFDS in its split order. Used
  by the device-resident pipeline; needs no TensorFlow for folders, digits and
  tiny_imagenet (read from the zip in the manual directory).
  """
  info = specs.info(config.dataset)
  if config.data_source == 'folder':
    files = folder_lists(config)[split]
    return folder.load_images(files.paths, info.raw_shape), files.labels
  if config.dataset == 'digits':
    from ssc_jax.data import digits  # pylint: disable=g-import-not-at-top
    return digits.load_split(split)
  if config.dataset == 'tiny_imagenet':
    from ssc_jax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    manual = os.path.join(config.data_dir or tfds.core.constants.DATA_DIR,
                          'downloads', 'manual', tiny_imagenet.ZIP_NAME)
    if os.path.exists(manual):
      rows = list(tiny_imagenet.iter_split(manual, split))
      images = np.stack([folder.decode(n, data) for n, data, _ in rows])
      return images, np.asarray([label for _, _, label in rows], np.int32)
  return _load_tfds(config, info.test_split if split == 'test' else 'train')
