"""Order, coverage, sharding over processes, determinism and resumption of
both pipelines (tf_data and device), on a small id-carrying image folder."""

import jax
import numpy as np
import pytest

import ssc_jax.data as data_lib
from ssc_jax.data import tfdata
from test_data_utils import config, id_folder, ids_of, mesh

PIPELINES = ('tf_data', 'device')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return id_folder(tmp_path_factory.mktemp('ids'))


def make_config(root, **kw):
  defaults = dict(dataset='digits', data_source='folder', folder_dir=root,
                  batch_size=20, eval_batch_size=30, seed=3)
  defaults.update(kw)
  return config(**defaults)


def take(iterator, n):
  return [jax.tree.map(np.asarray, next(iterator)) for _ in range(n)]


def test_spec_and_held_out_files(root):
  spec = data_lib.dataset_spec(make_config(root))
  assert (spec.num_train, spec.num_validation, spec.num_test) == (180, 20, 100)
  assert spec.image_shape == (8, 8, 1) and spec.num_classes == 10
  full = data_lib.dataset_spec(make_config(root, full_train=True))
  assert (full.num_train, full.num_validation) == (200, 0)


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_epoch_covers_train_once_and_eval_masks(root, pipeline):
  data = data_lib.create_input(make_config(root, pipeline=pipeline), mesh())
  assert data.steps_per_epoch == 9
  batches = take(data.train_batches(0), 9)
  for b in batches:
    assert b['image'].shape == (20, 8, 8, 1) and b['image'].dtype == np.float32
    assert b['label'].dtype == np.int32
  ids = np.concatenate([ids_of(b['image']) for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  # Train = all but the last 2 files (of 20) of every class.
  expected = [c * 20 + i for c in range(10) for i in range(18)]
  np.testing.assert_array_equal(np.sort(ids), expected)
  np.testing.assert_array_equal(labels, ids // 20)
  assert not np.array_equal(ids, np.sort(ids))  # Shuffled.

  for split, expected in (('validation', [c * 20 + i for c in range(10)
                                          for i in (18, 19)]),
                          ('test', 10_000 + np.arange(100))):
    batches = [jax.tree.map(np.asarray, b) for b in data.eval_batches(split)]
    assert len(batches) == -(-len(expected) // 30)
    mask = np.concatenate([b['mask'] for b in batches]).astype(bool)
    ids = np.concatenate([ids_of(b['image']) for b in batches])[mask]
    assert mask.sum() == len(expected)
    np.testing.assert_array_equal(np.sort(ids), expected)
    assert not mask[:len(expected)].all() or mask[len(expected):].sum() == 0


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_deterministic_and_resumable(root, pipeline):
  cfg = make_config(root, pipeline=pipeline)
  stream = take(data_lib.create_input(cfg, mesh()).train_batches(0), 12)
  again = take(data_lib.create_input(cfg, mesh()).train_batches(0), 12)
  for a, b in zip(stream, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  for k in (4, 9, 11):  # Within the first epoch, at and after its end.
    resumed = next(data_lib.create_input(cfg, mesh()).train_batches(k))
    np.testing.assert_array_equal(np.asarray(resumed['image']),
                                  stream[k]['image'])
    np.testing.assert_array_equal(np.asarray(resumed['label']),
                                  stream[k]['label'])
  other = take(data_lib.create_input(make_config(root, pipeline=pipeline,
                                                 seed=4), mesh())
               .train_batches(0), 1)[0]
  assert not np.array_equal(other['label'], stream[0]['label'])
  # Epoch 2 is another permutation of the same examples.
  first, second = (np.concatenate([ids_of(b['image']) for b in stream[s]])
                   for s in (slice(0, 9), slice(9, 12)))
  assert not np.array_equal(first[:60], second)


def test_two_processes_cover_each_example_once(root):
  cfg = make_config(root)
  spec = data_lib.dataset_spec(cfg)
  hosts = [tfdata.HostPipeline(cfg, spec, p, 2, num_devices=1) for p in (0, 1)]
  train = []
  for host in hosts:
    assert host.batch == 10
    stream = host.train_numpy(0)
    for _ in range(host.steps_per_epoch):
      train.append(ids_of(next(stream)['image']))
  np.testing.assert_array_equal(
      np.sort(np.concatenate(train)),
      [c * 20 + i for c in range(10) for i in range(18)])
  for split, n in (('validation', 20), ('test', 100)):
    seen, counts = [], []
    for host in hosts:
      batches = list(host.eval_numpy(split))
      counts.append(len(batches))
      for b in batches:
        assert len(b['mask']) == 15
        seen.append(ids_of(b['image'])[b['mask']])
    assert counts[0] == counts[1]  # Processes step together.
    seen = np.concatenate(seen)
    assert len(seen) == n and len(np.unique(seen)) == n


def test_batch_size_must_divide_devices(root):
  cfg = make_config(root, batch_size=21)
  with pytest.raises(ValueError, match=r'batch_size=21.*\(2\)'):
    tfdata.HostPipeline(cfg, data_lib.dataset_spec(cfg), 0, 1, num_devices=2)
  cfg = make_config(root, eval_batch_size=15)
  with pytest.raises(ValueError, match=r'eval_batch_size=15.*\(2\)'):
    tfdata.HostPipeline(cfg, data_lib.dataset_spec(cfg), 0, 1, num_devices=2)
