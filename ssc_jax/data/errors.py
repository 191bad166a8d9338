"""Exceptions of the input pipelines: errors the user can fix (see ssc_jax.errors)."""

from ssc_jax.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
  """A configured dataset is not available where it was looked for."""


class UnreadableImageError(UserError, ValueError):
  """An image file could not be decoded; the message names the file."""
