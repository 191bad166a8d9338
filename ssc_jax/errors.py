"""Errors a user caused and can fix.

The command-line programs (`ssc_jax.console.run`) print a `UserError` as one
line on stderr and exit with status 2, without a traceback (`--debug` shows
it). Any other exception is a bug of the program and keeps its traceback.
"""


class UserError(Exception):
  """An error in what the user asked for or gave: its message says what to change."""


class ConfigError(UserError, ValueError):
  """A config key or value the run cannot use; the message names the key."""


class WorkdirError(UserError, ValueError):
  """The workdir cannot be created or written."""
