"""Fixtures shared by several test modules."""

import pytest
import tensorflow_datasets as tfds


@pytest.fixture
def mock_tfds(monkeypatch):
  """TFDS datasets served by tfds.testing.mock_data (64 random examples a split)."""
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'is_prepared', lambda self: True)
  with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
    yield
