"""What a command-line program shows, and how an error the user caused ends it.

Every entry point (`python -m ssc_jax.main`, `ssc_jax.budget`, ...) runs its
`main` through `run(main)` instead of `absl.app.run(main)`:

- The console (stderr) shows what the program tells its user (`show`),
  ssc_jax's own warnings and any library's errors. Everything else (the INFO
  and WARNING output of absl, orbax, JAX, TFDS) goes only to the log file that
  `log_to_file` opens (the main job's `<workdir>/run.log`, which also holds
  everything the console showed).
- `--verbosity=0` (absl's flag, given explicitly; 1 adds DEBUG) or
  `--alsologtostderr` puts the full log on the console as well.
- With several processes only process 0 prints; the others show errors only
  and log to `run.process<i>.log`.
- A `ssc_jax.errors.UserError` (a bad config key or value, a missing dataset,
  an unwritable workdir, a refused checkpoint) and a command line that does
  not parse end the program with one line on stderr, `error: ...`, and exit
  status 2. `--debug` shows the traceback of a UserError. Any other exception
  is a bug of the program and keeps its traceback.
"""

import collections
import contextlib
import datetime
import difflib
import functools
import logging
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import ml_collections
from absl import app
from absl import flags
from absl import logging as absl_logging
from etils import epath
from ml_collections.config_flags import config_flags as config_flags_lib

from ssc_jax import errors

flags.DEFINE_bool('debug', False, 'Show the Python traceback of an error the user caused '
                  '(bad config, missing dataset, refused checkpoint) instead of one line.')

FLAGS = flags.FLAGS
USER_ERROR_STATUS = 2
_CONSOLE = 'ssc_jax.console'  # the logger of what the console shows
_KEPT_BEFORE_LOG_FILE = 10_000  # records kept until log_to_file opens the file
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def show(message: str, *args: Any) -> None:
  """Prints `message % args` on the console (process 0) and into the log file."""
  logging.getLogger(_CONSOLE).info(message, *args)


def run(main: Callable[[Sequence[str]], Any]) -> None:
  """`absl.app.run(main)` with this module's console, log file and user errors."""
  app.run(functools.partial(_run_main, main), flags_parser=_parse_flags)


def log_to_file(directory: epath.PathLike, process_index: int) -> epath.Path:
  """Writes the full log (and what came before) to `directory`/run.log.

  Call once the process index is known (after `jax.distributed.initialize`).
  Processes other than 0 write `run.process<i>.log` and print errors only.
  """
  name = 'run.log' if process_index == 0 else f'run.process{process_index}.log'
  path = epath.Path(directory) / name
  handler = logging.StreamHandler(path.open('a'))
  handler.setFormatter(absl_logging.PythonFormatter())
  root = logging.getLogger()
  handler.handle(logging.makeLogRecord(dict(
      msg=f'==== {datetime.datetime.now().isoformat(" ", "seconds")}: {" ".join(sys.argv)}',
      levelno=logging.INFO, levelname='INFO')))
  for pending in [h for h in root.handlers if isinstance(h, _Pending)]:
    root.removeHandler(pending)
    for record in pending.records:
      handler.handle(record)
  root.addHandler(handler)
  if process_index != 0:
    for console in _console_handlers():
      console.setLevel(logging.ERROR)
  return path


def describe_config(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                    width: int = 100) -> str:
  """`key=value` of each key whose value differs from `reference`, wrapped at `width`."""
  ours, theirs = _flat(config.to_dict()), _flat(reference.to_dict())
  items = [f'{key}={_short(value)}' for key, value in sorted(ours.items())
           if key not in theirs or theirs[key] != value]
  lines, line = [], ''
  for item in items:
    if line and len(line) + 2 + len(item) > width - 2:
      lines.append(line)
      line = ''
    line = f'{line}  {item}' if line else item
  return '\n'.join('  ' + l for l in lines + ([line] if line else []))


def format_table(rows: Iterable[Tuple[str, Any]]) -> str:
  """Two aligned columns, name and value (floats to 4 significant digits)."""
  rows = [(name, _short(value)) for name, value in rows]
  width = max((len(name) for name, _ in rows), default=0)
  return '\n'.join(f'  {name.ljust(width)}  {value}' for name, value in rows)


def _short(value: Any) -> str:
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, int):
    return f'{value:,}' if abs(value) >= 10_000 else str(value)
  if isinstance(value, float):
    return f'{value:,.0f}' if abs(value) >= 10_000 else f'{value:.4g}'
  if isinstance(value, (list, tuple)):
    return '(' + ', '.join(_short(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def _flat(values: Mapping[str, Any], prefix: str = '') -> dict:
  flat = {}
  for key, value in values.items():
    if isinstance(value, Mapping):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


# --- the console and the log -----------------------------------------------------

class _Pending(logging.Handler):
  """Keeps the records logged before `log_to_file` opens the file."""

  def __init__(self):
    super().__init__()
    self.records = collections.deque(maxlen=_KEPT_BEFORE_LOG_FILE)

  def emit(self, record: logging.LogRecord) -> None:
    self.records.append(record)


class _ConsoleFormatter(logging.Formatter):
  """The message as is for what `show` prints; 'warning: ...' and such otherwise."""

  def format(self, record: logging.LogRecord) -> str:
    text = super().format(record)
    if record.name == _CONSOLE and record.levelno == logging.INFO:
      return text
    return f'{record.levelname.lower()}: {text}'


def _for_the_console(record: logging.LogRecord) -> bool:
  """`show`'s messages, ssc_jax's own warnings, and everyone's errors."""
  if record.name == _CONSOLE or record.levelno >= logging.ERROR:
    return True
  return record.levelno >= logging.WARNING and record.pathname.startswith(_PACKAGE_DIR)


def _console_handlers() -> list:
  return [h for h in logging.getLogger().handlers if getattr(h, 'ssc_console', False)]


def full_log_on_console() -> bool:
  """Whether the flags (--verbosity, --alsologtostderr, --logtostderr) ask for the full log."""
  return FLAGS['verbosity'].present or FLAGS.alsologtostderr or FLAGS.logtostderr


@contextlib.contextmanager
def warnings_only() -> Iterator[None]:
  """Within: the console shows warnings and errors only (the log file still gets all)."""
  handlers = _console_handlers()
  at_least_warning = lambda record: record.levelno >= logging.WARNING
  for handler in handlers:
    handler.addFilter(at_least_warning)
  try:
    yield
  finally:
    for handler in handlers:
      handler.removeFilter(at_least_warning)


def _start_logging() -> None:
  """The console handler (quiet unless asked for all) and the buffer for the log file."""
  root = logging.getLogger()
  absl_handler = absl_logging.get_absl_handler()
  if full_log_on_console():
    console = absl_handler  # absl's own console, with its flags
    level = absl_logging.converter.absl_to_standard(min(FLAGS.verbosity, 1))
  else:
    root.removeHandler(absl_handler)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_for_the_console)
    console.setFormatter(_ConsoleFormatter())
    level = logging.INFO
    root.addHandler(console)
  console.ssc_console = True
  root.setLevel(level)
  absl_logging.get_absl_logger().setLevel(logging.NOTSET)  # follows the root's level
  root.addHandler(_Pending())
  logging.captureWarnings(True)
  sys.unraisablehook = _log_unraisable


def _log_unraisable(unraisable) -> None:
  """Exceptions Python cannot raise (e.g. TensorStore callbacks into a closed event loop
  after a failed read) go to the log file, not the console."""
  absl_logging.info('Exception ignored in %r (%s)', unraisable.object, unraisable.err_msg,
                    exc_info=(unraisable.exc_type, unraisable.exc_value,
                              unraisable.exc_traceback))


def _run_main(main: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> Any:
  """`main(argv)`; a UserError ends it with one line and status 2."""
  _start_logging()
  try:
    return main(argv)
  except errors.UserError as error:
    if FLAGS.debug:
      raise
    absl_logging.info('Stopped by an error the user can fix:', exc_info=error)
    _exit_with(str(error))


def _exit_with(message: str) -> None:
  text = ' '.join(line.strip() for line in message.strip().splitlines() if line.strip())
  sys.stderr.write(f'error: {text}\n')
  sys.stderr.flush()
  sys.exit(USER_ERROR_STATUS)


# --- the command line -------------------------------------------------------------

def _parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl's flag parsing; what the user mistyped ends the program in one line."""
  try:
    remaining = FLAGS(argv)
  except flags.Error as error:
    _exit_with(f'{error} (--helpfull lists the flags)')
  except (AttributeError, KeyError):  # ml_collections: an override of a missing key
    unknown = _unknown_config_keys(argv)
    if not unknown:
      raise
    _exit_with('; '.join(unknown))
  except OSError as error:  # ml_collections: an override in a config that did not load
    _exit_with(f'{_config_flag_text(argv)}: cannot load the config file ({_last_line(error)})')
  for _, flag in _config_flags():
    try:  # a config file that failed to load raises OSError on any attribute access
      getattr(flag.value, '_loaded', None)
    except OSError as error:
      _exit_with(f'{_config_flag_text(argv)}: cannot load the config file ({_last_line(error)})')
  return remaining


def _config_flags() -> list:
  """(name, flag) of each flag defined by DEFINE_config_file."""
  return [(name, FLAGS[name]) for name in FLAGS
          if isinstance(FLAGS[name].parser, config_flags_lib.ConfigFileFlagParser)
          and name == FLAGS[name].name]


def _config_flag_text(argv: Sequence[str]) -> str:
  names = [name for name, _ in _config_flags()]
  given = [arg for arg in argv if any(arg.startswith(f'--{n}=') for n in names)]
  return given[-1] if given else '--' + (names[0] if names else 'config')


def _last_line(error: BaseException) -> str:
  while error.__cause__ is not None:
    error = error.__cause__
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def _config_file(name: str, argv: Sequence[str]) -> Optional[str]:
  """The path given to --name (the last one, as absl takes it)."""
  path = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      path = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def _unknown_config_keys(argv: Sequence[str]) -> list:
  """'--config.KEY: no such key (did you mean ...)' for each override of a missing key."""
  problems = []
  for name, _ in _config_flags():
    path = _config_file(name, argv)
    if path is None:
      continue
    config = config_flags_lib.ConfigFileFlagParser(name=name, lock_config=False).parse(path)
    if not isinstance(config, ml_collections.ConfigDict):
      continue
    for arg in argv:
      prefix = next((p for p in (f'--{name}.', f'--no{name}.') if arg.startswith(p)), None)
      if prefix is None:
        continue
      key = arg[len(prefix):].split('=', 1)[0]
      if not _has_key(config, key):
        problems.append(f'--{name}.{key}: {_no_such_key(config, key)}')
  return problems


def _has_key(config: ml_collections.ConfigDict, key: str) -> bool:
  node = config
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def _no_such_key(config: ml_collections.ConfigDict, key: str) -> str:
  """'the config has no key KEY; did you mean A or B?' (or the keys next to it)."""
  names = sorted(_flat(config.to_dict()))
  names += sorted({n.rsplit('.', 1)[0] for n in names if '.' in n})
  same_depth = [n for n in names if n.count('.') == key.count('.')]
  close = difflib.get_close_matches(key, same_depth, n=2, cutoff=0.6)
  if close:
    return f'the config has no key {key}; did you mean {" or ".join(close)}?'
  parent = key.rsplit('.', 1)[0] if '.' in key else ''
  siblings = sorted({n[len(parent) + 1:].split('.')[0] for n in names
                     if parent and n.startswith(parent + '.')})
  if not siblings:
    parent, siblings = '', sorted(config.keys())
  where = f'the keys of {parent}' if parent else 'its keys'
  return f'the config has no key {key}; {where} are: {", ".join(siblings)}'
