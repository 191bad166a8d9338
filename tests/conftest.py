"""Fixtures shared by several test modules, and the suite's XLA compilation cache."""

import os
import shutil
import tempfile

import jax
import pytest
import tensorflow_datasets as tfds

from ssc_jax.ssc import autotune

# Modules whose tests train real runs (tens of seconds each), run first: the two xdist
# workers then end on short tests and finish together.
_HEAVY_MODULES = ('test_train.py', 'test_multihost.py', 'test_train_networks.py',
                  'test_search.py', 'test_console.py', 'test_report.py', 'test_lowerings.py')

_XLA_CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'
_CREATED = pytest.StashKey[str]()  # the cache directory this run made (and removes)


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole suite.

  Many tests compile the same programs (the digits model's steps, in this
  process and in the `python -m ssc_jax.main` processes they start). The
  controller creates the directory; xdist workers and child processes inherit
  it through the environment, so each program compiles once per run.
  """
  if _XLA_CACHE_ENV not in os.environ:
    os.environ[_XLA_CACHE_ENV] = tempfile.mkdtemp(prefix='ssc_jax_tests_xla_')
    config.stash[_CREATED] = os.environ[_XLA_CACHE_ENV]
  jax.config.update('jax_compilation_cache_dir', os.environ[_XLA_CACHE_ENV])


def pytest_unconfigure(config):
  if _CREATED in config.stash:
    shutil.rmtree(config.stash[_CREATED], ignore_errors=True)


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
