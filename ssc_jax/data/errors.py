"""Exceptions of the input pipelines."""


class DatasetNotFoundError(FileNotFoundError):
  """A configured dataset is not available where it was looked for."""


class UnreadableImageError(ValueError):
  """An image file could not be decoded; the message names the file."""
