"""Per-process sharding helpers and batch-size checks."""

import numpy as np
import pytest

from ssc_jax.data import partition


@pytest.mark.parametrize('n,count', [(10, 1), (10, 2), (11, 2), (1001, 8), (3, 4)])
def test_process_ranges_cover_each_example_once(n, count):
  ranges = [partition.process_range(n, p, count) for p in range(count)]
  covered = np.concatenate([np.arange(a, b) for a, b in ranges])
  np.testing.assert_array_equal(covered, np.arange(n))
  sizes = [b - a for a, b in ranges]
  assert max(sizes) - min(sizes) <= 1


def test_process_range_rejects_bad_index():
  with pytest.raises(ValueError):
    partition.process_range(10, 2, 2)


def test_local_batch_size():
  assert partition.local_batch_size(128, 'batch_size', 8, 2) == 64
  with pytest.raises(ValueError, match=r'batch_size=100.*\(8\)'):
    partition.local_batch_size(100, 'batch_size', 8, 1)
  with pytest.raises(ValueError, match='eval_batch_size=6'):
    partition.local_batch_size(6, 'eval_batch_size', 2, 4)


@pytest.mark.parametrize('n,batch,count', [(10_000, 500, 1), (10_000, 512, 2),
                                           (5, 4, 2), (1, 8, 4)])
def test_eval_steps_fit_every_process(n, batch, count):
  steps = partition.eval_steps(n, batch, count)
  for p in range(count):
    a, b = partition.process_range(n, p, count)
    assert b - a <= steps * batch // count
  assert (steps - 1) * batch // count < -(-n // count)
