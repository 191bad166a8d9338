"""Fixtures shared by several test modules."""

import pytest
import tensorflow_datasets as tfds

from ssc_jax.ssc import autotune

# Modules whose tests train real runs (tens of seconds each), run first: the two xdist
# workers then end on short tests and finish together.
_HEAVY_MODULES = ('test_train.py', 'test_multihost.py', 'test_train_networks.py',
                  'test_search.py', 'test_console.py', 'test_report.py', 'test_lowerings.py',
                  'test_export.py', 'test_nnx.py', 'test_docs.py')


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.path.name not in _HEAVY_MODULES)  # stable: order kept within


@pytest.fixture(autouse=True)
def autotune_cache(tmp_path, monkeypatch):
  """Each test (and the processes it starts) its own empty autotuner cache file, so that
  'auto' layers follow the cost rule unless the test tunes them itself."""
  path = tmp_path / 'autotune_cache.json'
  monkeypatch.setenv(autotune.CACHE_ENV, str(path))
  return path


@pytest.fixture
def mock_tfds(monkeypatch):
  """TFDS datasets served by tfds.testing.mock_data (64 random examples a split)."""
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'is_prepared', lambda self: True)
  with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
    yield
