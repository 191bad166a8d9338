"""TFDS pipelines on mock data, the digits and tiny_imagenet builders, errors."""

import io
import os
import subprocess
import sys
import zipfile

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import ssc_jax.data as data_lib
from ssc_jax.data import digits
from ssc_jax.data import sources
from ssc_jax.data import tiny_imagenet
from test_data_utils import HIDE_TENSORFLOW, REPO, config, mesh


@pytest.mark.parametrize('name,classes', [('cifar10', 10), ('cifar100', 100)])
def test_mock_cifar(mock_tfds, name, classes):
  cfg = config(dataset=name, batch_size=16, eval_batch_size=500,
               shuffle_buffer_size=64)
  spec = data_lib.dataset_spec(cfg)
  assert (spec.num_train, spec.num_validation, spec.num_test) == (
      45_000, 5_000, 10_000)
  assert spec.num_classes == classes
  data = data_lib.create_input(cfg, mesh())
  assert data.steps_per_epoch == 45_000 // 16
  stream = data.train_batches(0)
  first = [jax.tree.map(np.asarray, next(stream)) for _ in range(3)]
  assert first[0]['image'].shape == (16, 32, 32, 3)
  assert first[0]['image'].dtype == np.float32
  assert first[0]['label'].dtype == np.int32
  assert first[0]['label'].max() < classes
  assert not np.array_equal(first[0]['image'], first[1]['image'])
  # Deterministic, resumable, seed-dependent.
  resumed = next(data_lib.create_input(cfg, mesh()).train_batches(2))
  np.testing.assert_array_equal(np.asarray(resumed['image']), first[2]['image'])
  cfg.seed = 1
  other = next(data_lib.create_input(cfg, mesh()).train_batches(0))
  assert not np.array_equal(np.asarray(other['image']), first[0]['image'])
  # Eval: the mock split has 64 examples; the rest of the 20 batches is padding.
  batches = list(data.eval_batches('test'))
  assert len(batches) == 20
  assert sum(int(np.asarray(b['mask']).sum()) for b in batches) == 64


def test_digits_builder_builds_offline(tmp_path):
  builder = tfds.builder('digits', data_dir=str(tmp_path))
  builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == digits.NUM_TRAIN == 1500
  assert builder.info.splits['test'].num_examples == digits.NUM_TEST == 297
  test = tfds.as_numpy(builder.as_dataset(split='test', batch_size=-1))
  images, labels = digits.load_split('test')
  np.testing.assert_array_equal(test['image'], images)  # Same order as sklearn.
  np.testing.assert_array_equal(test['label'], labels)
  assert images.shape == (297, 8, 8, 1) and images.max() == 255
  train_images, _ = digits.load_split('train')
  assert not {x.tobytes() for x in train_images} & {x.tobytes() for x in images}
  # Both pipelines hold out the same validation examples.
  cfg = config(dataset='digits', data_dir=str(tmp_path), eval_batch_size=50)
  spec = data_lib.dataset_spec(cfg)
  assert (spec.num_train, spec.num_validation, spec.num_test) == (1350, 150, 297)
  labels = {}
  for pipeline in ('tf_data', 'device'):
    cfg.pipeline = pipeline
    data = data_lib.create_input(cfg, mesh())
    batches = [jax.tree.map(np.asarray, b) for b in data.eval_batches('validation')]
    labels[pipeline] = np.concatenate([b['label'][b['mask'].astype(bool)]
                                       for b in batches])
  np.testing.assert_array_equal(labels['tf_data'], labels['device'])
  assert len(labels['device']) == 150


def _jpeg(color, mode='RGB'):
  buffer = io.BytesIO()
  Image.new(mode, (64, 64), color).save(buffer, 'JPEG')
  return buffer.getvalue()


def _tiny_zip(path):
  """A Tiny-ImageNet zip: 200 wnids, 3 train images of 4 classes, 5 val."""
  wnids = [f'n{i:08d}' for i in range(200)][::-1]  # Sorted by the builder.
  with zipfile.ZipFile(path, 'w') as z:
    root = 'tiny-imagenet-200'
    z.writestr(f'{root}/wnids.txt', '\n'.join(wnids) + '\n')
    for c in (0, 1, 2, 199):
      wnid = f'n{c:08d}'
      z.writestr(f'{root}/train/{wnid}/{wnid}_boxes.txt', '')
      for i in range(3):
        mode = 'L' if (c, i) == (2, 0) else 'RGB'
        color = 40 * i if mode == 'L' else (c % 256, 40 * i, 0)
        z.writestr(f'{root}/train/{wnid}/images/{wnid}_{i}.JPEG',
                   _jpeg(color, mode))
    rows = []
    for i, c in enumerate((5, 0, 199, 1, 5)):
      z.writestr(f'{root}/val/images/val_{i}.JPEG', _jpeg((c, 0, 0)))
      rows.append(f'val_{i}.JPEG\tn{c:08d}\t0\t0\t63\t63')
    z.writestr(f'{root}/val/val_annotations.txt', '\n'.join(rows) + '\n')
    z.writestr(f'{root}/test/images/test_0.JPEG', _jpeg((0, 0, 0)))


def test_tiny_imagenet_builder(tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  _tiny_zip(manual / tiny_imagenet.ZIP_NAME)
  sources.register_builders()
  builder = tfds.builder('tiny_imagenet', data_dir=str(tmp_path))
  builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == 12
  assert builder.info.splits['test'].num_examples == 5
  assert builder.info.features['label'].names[:2] == ['n00000000', 'n00000001']
  train = tfds.as_numpy(builder.as_dataset(split='train', batch_size=-1))
  # Interleaved by class: first file of every class, then the second, ...
  np.testing.assert_array_equal(train['label'], [0, 1, 2, 199] * 3)
  assert train['image'].shape == (12, 64, 64, 3)
  gray = train['image'][2]  # Class 2, image 0: a grayscale JPEG.
  assert (gray[..., 0] == gray[..., 1]).all()
  test = tfds.as_numpy(builder.as_dataset(split='test', batch_size=-1))
  np.testing.assert_array_equal(test['label'], [5, 0, 199, 1, 5])
  # The device pipeline reads the same examples from the zip without TF.
  cfg = config(dataset='tiny_imagenet', data_dir=str(tmp_path))
  images, labels = sources.load_split(cfg, 'train')
  np.testing.assert_array_equal(labels, train['label'])
  assert np.abs(images.astype(int) - train['image']).max() <= 2  # JPEG codecs.
  spec = data_lib.dataset_spec(cfg)
  assert (spec.num_train, spec.num_validation, spec.num_test) == (11, 1, 5)


def test_missing_tfds_dataset_error(tmp_path):
  cfg = config(dataset='cifar10', data_dir=str(tmp_path))
  with pytest.raises(data_lib.DatasetNotFoundError) as e:
    data_lib.create_input(cfg, mesh())
  message = str(e.value)
  for part in ("'cifar10'", str(tmp_path), 'tfds build cifar10', 'folder_dir'):
    assert part in message
  cfg.dataset = 'tiny_imagenet'
  with pytest.raises(FileNotFoundError, match='tiny-imagenet-200.zip'):
    data_lib.create_input(cfg, mesh())


def test_missing_folder_error(tmp_path):
  cfg = config(dataset='cifar10', data_source='folder',
               folder_dir=str(tmp_path / 'nowhere'))
  with pytest.raises(data_lib.DatasetNotFoundError,
                     match=r"'cifar10'.*nowhere.*tfds build"):
    data_lib.dataset_spec(cfg)


@pytest.mark.parametrize('pipeline', ['tf_data', 'device'])
def test_unreadable_image_names_its_file(tmp_path, pipeline):
  for split in ('train', 'test'):
    for c in range(10):
      directory = tmp_path / split / f'c{c}'
      directory.mkdir(parents=True)
      for i in range(2):
        Image.new('L', (8, 8), i).save(directory / f'{i}.png')
  bad = tmp_path / 'train' / 'c3' / '0.png'
  bad.write_bytes(b'not an image')
  cfg = config(dataset='digits', data_source='folder', folder_dir=str(tmp_path),
               pipeline=pipeline, batch_size=2, full_train=True)
  with pytest.raises(data_lib.UnreadableImageError, match=str(bad)):
    stream = data_lib.create_input(cfg, mesh()).train_batches(0)
    for _ in range(10):
      next(stream)


_NO_TF_LOAD = HIDE_TENSORFLOW + '''
import numpy as np
from ssc_jax import config_lib
from ssc_jax.data import digits, sources
config = config_lib.base()
config.dataset, config.data_dir = 'digits', sys.argv[1]
images, labels = sources._load_tfds(config, 'test')
expected = digits.load_split('test')
assert (images == expected[0]).all() and (labels == expected[1]).all()
assert 'tensorflow' not in sys.modules
print('ok')
'''


def test_array_record_tfds_data_loads_without_tensorflow(tmp_path):
  sources.register_builders()
  tfds.builder('digits', data_dir=str(tmp_path),
               file_format='array_record').download_and_prepare()
  result = subprocess.run([sys.executable, '-c', _NO_TF_LOAD, str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO))
  assert result.stdout.strip().endswith('ok'), result.stderr[-3000:]
