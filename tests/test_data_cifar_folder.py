"""CIFAR-10 from the JPEG copy in the image-folder layout (skipped if absent)."""

import os

import numpy as np
import pytest

import ssc_jax.data as data_lib
from ssc_jax.data import folder
from ssc_jax.data import sources
from test_data_utils import CIFAR_CLASSES, cifar_jpeg_dir, config, mesh
from test_data_utils import small_cifar


@pytest.fixture(scope='module')
def full_config():
  return config(dataset='cifar10', data_source='folder',
                folder_dir=cifar_jpeg_dir())


@pytest.fixture(scope='module')
def small_root(tmp_path_factory):
  return small_cifar(tmp_path_factory.mktemp('cifar'))


def test_split_sizes(full_config):
  spec = data_lib.dataset_spec(full_config)
  assert (spec.num_train, spec.num_validation, spec.num_test) == (
      45_000, 5_000, 10_000)
  assert spec.num_classes == 10 and spec.image_shape == (32, 32, 3)
  full_config.full_train = True
  try:
    spec = data_lib.dataset_spec(full_config)
  finally:
    full_config.full_train = False
  assert (spec.num_train, spec.num_validation) == (50_000, 0)


def test_label_order_and_disjoint_splits(full_config):
  lists = sources.folder_lists(full_config)
  train, test = lists['train'], lists['test']
  assert train.class_names == CIFAR_CLASSES
  for files in (train, test):
    for path, label in zip(files.paths[::997], files.labels[::997]):
      assert os.path.basename(os.path.dirname(path)) == CIFAR_CLASSES[label]
  assert train.labels[0] == 0 and train.labels[-1] == 9  # airplane ... truck
  held = folder.held_out_mask(train, full_config.validation_fraction)
  validation = set(np.asarray(train.paths)[held])
  training = set(np.asarray(train.paths)[~held])
  assert len(validation) == 5_000 and len(training) == 45_000
  assert not validation & training and not (validation | training) & set(test.paths)
  # The last 500 files of every class are held out.
  np.testing.assert_array_equal(np.bincount(train.labels[held]), [500] * 10)
  for c in range(10):
    names = sorted(os.path.basename(p) for p, l in
                   zip(np.asarray(train.paths)[held], train.labels[held]) if l == c)
    assert names[0] == '4500.jpg' and names[-1] == '4999.jpg'


@pytest.mark.parametrize('pipeline', ['tf_data', 'device'])
def test_normalised_statistics_and_padding(small_root, pipeline):
  cfg = config(dataset='cifar10', data_source='folder', folder_dir=small_root,
               pipeline=pipeline, batch_size=90, eval_batch_size=100)
  data = data_lib.create_input(cfg, mesh())
  test = np.concatenate([np.asarray(b['image']) for b in data.eval_batches('test')])
  assert test.shape == (100, 32, 32, 3)
  means, stds = test.mean(axis=(0, 1, 2)), test.std(axis=(0, 1, 2))
  assert np.all(np.abs(means) < 0.25), means
  assert np.all((stds > 0.75) & (stds < 1.25)), stds
  train = np.asarray(next(data.train_batches(0))['image'])
  # Zero (black) padding becomes -mean/std after normalisation; with 4-px
  # random crops about 13% of pixels are padding.
  info = data_lib.specs.info('cifar10')
  black = np.isclose(train, -np.asarray(info.mean) / np.asarray(info.std),
                     atol=1e-5).all(-1)
  assert 0.05 < black.mean() < 0.25, black.mean()
  rows_black = black.all(axis=2)  # (B, H): whole padded rows.
  # No example is shifted by more than the padding.
  assert rows_black.sum(axis=1).max() <= 4
