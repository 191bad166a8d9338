"""Runs config rows one after another and files each finished run under results/runs/.

    python -m ssc_jax.reproduce --rows=ROWS --recipe=short|paper --out=DIR
        [--time_budget_s=S] [--overrides=KEY=VALUE,...] [--data=PATH]
        [--results=DIR] [--dry_run]

ROWS is a comma-separated list of rows and row sets. A row is a config of
`configs/` with optional overrides of its own, `<config>[:<key>=<value>]...`,
e.g. `cifar10_resnet32_10:model.taps=full`; its directory name is
`cifar10_resnet32_10-taps_full`. Sets: `paper_cifar10` (the paper's eight
CIFAR-10 rows) and `paper_cifar10_taps_full` (its six SSC rows with 9-tap
kernels). `--overrides` apply to every row (e.g. `model.dtype=bfloat16`).

Recipes: `paper` runs each config as it is; `short` is the paper's recipe
scaled to 30 epochs, its learning-rate boundaries (and warm-up) scaled alike
(CIFAR: 250 epochs, drops at 100/150/200 -> 30 epochs, drops at 12/18/24).

Each row runs `python -m ssc_jax.main` on the CIFAR-10 JPEG copy through the
device-resident pipeline (no TensorFlow) in `DIR/<recipe>/<row dir>`, its
stdout and stderr captured in `console.log` there. A finished row's
summary.json, metrics.jsonl, run.log, console.log and a row.json (config,
overrides, recipe, command, card, dates) are copied to
`<results>/runs/<recipe>/<row dir>/`; a row already there is skipped.

With `--time_budget_s`, a row is not started when its estimated duration
exceeds the time left (estimated from earlier runs of the same row, else of
the same network, else from rows finished in this invocation; a row with no
estimate starts). A row still running at the deadline gets SIGTERM: the main
job saves a checkpoint and exits, the row is not filed, and the same command
with the same --out resumes it.

This module does not import matplotlib and never touches an accelerator
(the main job it starts needs all of it); `python -m ssc_jax.report` makes
the tables and plots.
"""

import dataclasses
import datetime
import difflib
import importlib.metadata
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags

from ssc_jax import config_lib
from ssc_jax.data import archive

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / 'configs'
RECIPES = ('short', 'paper')
SHORT_EPOCHS = 30
# Where the CIFAR-10 JPEG copy is looked for when --data is not given.
DATA_CANDIDATES = (REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.tar.xz',
                   REPO / 'shared' / 'data' / 'cifar10-jpeg.tar.xz')
MAIN = (sys.executable, '-m', 'ssc_jax.main')
_PAPER_CIFAR10_SSC = tuple(f'cifar10_{network}_{ticket}' for network in ('resnet32', 'vgg19')
                           for ticket in (10, 5, 2))
ROW_SETS = {
    'paper_cifar10': ('cifar10_resnet32_dense', *_PAPER_CIFAR10_SSC[:3],
                      'cifar10_vgg19_dense', *_PAPER_CIFAR10_SSC[3:]),
    'paper_cifar10_taps_full': tuple(f'{row}:model.taps=full' for row in _PAPER_CIFAR10_SSC),
}
# The rows each recipe's results table lists, run or not.
PLANNED_ROWS = {
    'short': ROW_SETS['paper_cifar10'] + ROW_SETS['paper_cifar10_taps_full'],
    'paper': ROW_SETS['paper_cifar10'],
}
_KEY = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$')


@dataclasses.dataclass(frozen=True)
class Row:
  """One config of `configs/` with overrides of its own."""
  config: str  # file stem in configs/
  overrides: Tuple[Tuple[str, str], ...] = ()

  @property
  def spec(self) -> str:
    """The row as written in --rows: 'cifar10_resnet32_10:model.taps=full'."""
    return ':'.join([self.config] + [f'{k}={v}' for k, v in self.overrides])

  @property
  def dirname(self) -> str:
    """A directory name of [A-Za-z0-9._-] only: 'cifar10_resnet32_10-taps_full'."""
    parts = [self.config]
    for key, value in self.overrides:
      safe = re.sub(r'[^A-Za-z0-9.]+', '_', value).strip('_') or 'empty'
      parts.append(f'{key.rsplit(".", 1)[-1]}_{safe}')
    return '-'.join(parts)

  @property
  def config_path(self) -> pathlib.Path:
    return CONFIG_DIR / f'{self.config}.py'


def split_list(text: str) -> List[str]:
  """Splits on commas outside brackets: 'a,b:model.g=(1,2),c' -> ['a', 'b:model.g=(1,2)', 'c']."""
  items, depth, current = [], 0, ''
  for char in text:
    depth += {'(': 1, '[': 1, ')': -1, ']': -1}.get(char, 0)
    if char == ',' and depth == 0:
      items.append(current)
      current = ''
    else:
      current += char
  items.append(current)
  return [item.strip() for item in items if item.strip()]


def parse_override(text: str, where: str) -> Tuple[str, str]:
  """'model.taps=full' -> ('model.taps', 'full'); a clear error naming `where` otherwise."""
  key, sep, value = text.partition('=')
  if not sep or not _KEY.match(key.strip()):
    raise ValueError(f"{where}: override {text!r} must be <key>=<value> with a dotted config "
                     "key, e.g. 'model.taps=full'")
  return key.strip(), value.strip()


def parse_row(spec: str) -> Row:
  """'cifar10_resnet32_10:model.taps=full' -> Row('cifar10_resnet32_10', (('model.taps', 'full'),)).

  Values cannot hold ':' (it separates the overrides).
  """
  config, *overrides = spec.split(':')
  if not re.fullmatch(r'[A-Za-z0-9_.-]+', config):
    raise ValueError(f'row {spec!r}: the config name {config!r} must be a file stem of configs/')
  return Row(config, tuple(parse_override(o, f'row {spec!r}') for o in overrides))


def expand_rows(text: str) -> List[Row]:
  """The rows of a --rows value, sets expanded, duplicates dropped, in order."""
  rows: List[Row] = []
  for item in split_list(text):
    for spec in ROW_SETS.get(item, (item,)):
      row = parse_row(spec)
      if row not in rows:
        rows.append(row)
  if not rows:
    raise ValueError('--rows names no row')
  by_dir: Dict[str, Row] = {}
  for row in rows:
    if row.dirname in by_dir:
      raise ValueError(f'rows {by_dir[row.dirname].spec!r} and {row.spec!r} would share the '
                       f'directory {row.dirname!r}')
    by_dir[row.dirname] = row
  return rows


def _has_key(config, key: str) -> bool:
  node = config
  for part in key.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


def load_row_config(row: Row, common: Sequence[Tuple[str, str]] = ()):
  """The row's config; ValueError naming the row if it is not a CIFAR-10 config of configs/
  or an override names a key the config does not have."""
  if not row.config_path.is_file():
    close = difflib.get_close_matches(row.config, [p.stem for p in CONFIG_DIR.glob('*.py')] +
                                      list(ROW_SETS), n=3)
    hint = f' (did you mean {", ".join(close)}?)' if close else ''
    raise ValueError(f'row {row.spec!r}: no config file {row.config_path} and no row set of '
                     f'that name{hint}')
  config = config_lib.load_config_module(row.config_path).get_config()
  if config.dataset != 'cifar10':
    raise ValueError(f'row {row.spec!r}: dataset {config.dataset!r}; reproduce runs CIFAR-10 '
                     'rows only (its data is the CIFAR-10 JPEG copy)')
  for key, _ in (*common, *row.overrides):
    if not _has_key(config, key):
      raise ValueError(f'row {row.spec!r}: override key {key!r} is not a key of '
                       f'{row.config_path.name}')
  return config


def format_number(x: float) -> str:
  """30.0 -> '30', 12.857142 -> '12.8571': a config value as a command line writes it."""
  return str(int(x)) if float(x).is_integer() else repr(round(float(x), 4))


def recipe_schedule(config, recipe: str) -> Tuple[float, Tuple[float, ...], float]:
  """(epochs, lr boundaries in epochs, warm-up epochs) of `recipe` applied to `config`."""
  if recipe not in RECIPES:
    raise ValueError(f'--recipe={recipe!r} must be one of {RECIPES}')
  scale = SHORT_EPOCHS / config.num_epochs if recipe == 'short' else 1.0
  return (config.num_epochs * scale, tuple(b * scale for b in config.lr_boundaries_epochs),
          config.warmup_epochs * scale)


def recipe_overrides(config, recipe: str) -> List[Tuple[str, str]]:
  """The config overrides of `recipe`: none for 'paper', the 30-epoch schedule for 'short'."""
  epochs, boundaries, warmup = recipe_schedule(config, recipe)
  if recipe == 'paper':
    return []
  text = ','.join(map(format_number, boundaries)) + (',' if len(boundaries) == 1 else '')
  overrides = [('num_epochs', format_number(epochs)), ('lr_boundaries_epochs', f'({text})')]
  if warmup:
    overrides.append(('warmup_epochs', format_number(warmup)))
  return overrides


def resolve_data(data: Optional[str], out: pathlib.Path, dry_run: bool) -> pathlib.Path:
  """The CIFAR-10 JPEG folder (holding train/ and test/): `data` itself if it is such a
  folder, else the archive `data` unpacked once into DIR/cifar10-jpeg."""
  if data:
    path = pathlib.Path(data).resolve()
  else:
    found = [p for p in DATA_CANDIDATES if p.exists()]
    if not found:
      raise ValueError('no CIFAR-10 JPEG copy at ' + ' or '.join(map(str, DATA_CANDIDATES)) +
                       '; give --data=ARCHIVE_OR_FOLDER')
    path = found[0]
  if path.is_dir():
    if not ((path / 'train').is_dir() and (path / 'test').is_dir()):
      raise ValueError(f'--data={path}: a folder must hold train/ and test/')
    return path
  if not path.is_file():
    raise ValueError(f'--data={path}: no such archive or folder')
  dest = out / 'cifar10-jpeg'
  if not dry_run:
    archive.unpack_once(str(path), str(dest))
  return dest


def main_command(row: Row, recipe_keys: Sequence[Tuple[str, str]],
                 common: Sequence[Tuple[str, str]], workdir: pathlib.Path,
                 data_dir: pathlib.Path, main: Sequence[str] = MAIN) -> List[str]:
  """The main job's argv for one row (run from the repository root); row overrides come last."""
  overrides = [f'--config.{k}={v}' for k, v in (*recipe_keys, *common, *row.overrides)]
  return [*main, f'--config=configs/{row.config}.py', f'--workdir={workdir}',
          '--config.data_source=folder', f'--config.folder_dir={data_dir}',
          '--config.pipeline=device', *overrides]


@dataclasses.dataclass
class Past:
  """A finished run, for time estimates."""
  dirname: str
  network: str
  epochs: float
  seconds: float
  source: str  # where it comes from, for the message


def past_runs(results: pathlib.Path) -> List[Past]:
  """The filed runs under results/runs/ that recorded their duration."""
  runs = []
  for path in sorted((results / 'runs').glob('*/*/row.json')):
    info = json.loads(path.read_text())
    if info.get('duration_s') and info.get('epochs'):
      runs.append(Past(info['dirname'], info['network'], info['epochs'], info['duration_s'],
                       f'{info["recipe"]}/{info["dirname"]}'))
  return runs


def estimate_seconds(row: Row, network: str, epochs: float, filed: Sequence[Past],
                     this_run: Sequence[Past]) -> Tuple[Optional[float], str]:
  """(seconds, basis) for `row`: per-epoch time of the same row, else the slowest of the same
  network, else the slowest row of this invocation; (None, ...) if nothing is known."""
  candidates = [
      [p for p in (*this_run, *filed) if p.dirname == row.dirname],
      [p for p in (*this_run, *filed) if p.network == network],
      list(this_run),
  ]
  for runs in candidates:
    if runs:
      slowest = max(runs, key=lambda p: p.seconds / p.epochs)
      return slowest.seconds / slowest.epochs * epochs, f'from {slowest.source}'
  return None, 'no earlier run to estimate from'


@dataclasses.dataclass
class Outcome:
  row: Row
  status: str  # done | filed | skipped | would run | would file | not started | stopped | failed
  detail: str
  estimate_s: Optional[float] = None  # the estimated duration, where one was made


def file_run(workdir: pathlib.Path, entry: pathlib.Path, info: dict) -> None:
  """Copies a finished run's files and `info` (row.json) to `entry`, atomically."""
  entry.parent.mkdir(parents=True, exist_ok=True)
  tmp = entry.parent / f'.{entry.name}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  for name in ('summary.json', 'metrics.jsonl', 'run.log', 'console.log'):
    if (workdir / name).is_file():
      shutil.copy2(workdir / name, tmp / name)
  (tmp / 'row.json').write_text(json.dumps(info, indent=2) + '\n')
  if entry.exists():  # an unfinished leftover: the summary check said it holds no run
    shutil.rmtree(entry)
  os.rename(tmp, entry)


def _utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _jax_version() -> Optional[str]:
  try:
    return importlib.metadata.version('jax')
  except importlib.metadata.PackageNotFoundError:
    return None


class _Stop:
  """Set when this process receives SIGTERM: the running row is stopped, no new one starts."""

  def __init__(self):
    self.received = False

  def __call__(self, signum, frame):
    del signum, frame
    self.received = True


def run_process(command: Sequence[str], log: pathlib.Path, deadline: Optional[float],
                stop: _Stop, grace_s: float) -> Tuple[int, bool]:
  """Runs `command` from the repository root, output to `log`; SIGTERM at `deadline` or when
  `stop` is set, SIGKILL `grace_s` later. Returns (exit code, whether it was stopped)."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  with log.open('a') as out:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    stopped = False
    while process.poll() is None:
      if not stopped and (stop.received or (deadline is not None and time.time() >= deadline)):
        process.send_signal(signal.SIGTERM)
        stopped, kill_at = True, time.time() + grace_s
      if stopped and time.time() >= kill_at:
        process.kill()
      try:
        process.wait(timeout=0.2)
      except subprocess.TimeoutExpired:
        pass
  return process.returncode, stopped


def _tail(path: pathlib.Path, lines: int = 20) -> str:
  if not path.is_file():
    return ''
  return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:])


def reproduce(rows: Sequence[Row], recipe: str, out: str, results: str, data: Optional[str] = None,
              common: Sequence[Tuple[str, str]] = (), time_budget_s: Optional[float] = None,
              dry_run: bool = False, grace_s: float = 180.0, main: Sequence[str] = MAIN,
              echo: Callable[[str], None] = print) -> List[Outcome]:
  """Runs (or with `dry_run` prints) each row in turn; see the module docstring.

  `main` is the main job's command (tests put a stand-in there); `echo` takes progress lines.
  """
  deadline = None if time_budget_s is None else time.time() + time_budget_s
  if recipe not in RECIPES:
    raise ValueError(f'--recipe={recipe!r} must be one of {RECIPES}')
  configs = [load_row_config(row, common) for row in rows]  # every error before any run
  out_dir, results_dir = pathlib.Path(out).resolve(), pathlib.Path(results).resolve()
  data_dir = resolve_data(data, out_dir, dry_run)
  echo(f'data: {data_dir}' + ('' if data_dir.is_dir() or not dry_run else
                              ' (the archive is unpacked there on a real run)'))
  session = _Session(recipe, out_dir, results_dir, data_dir, tuple(common), deadline, dry_run,
                     grace_s, tuple(main), echo, past_runs(results_dir))
  previous_handler = None if dry_run else signal.signal(signal.SIGTERM, session.stop)
  try:
    return [session.row(row, config) for row, config in zip(rows, configs)]
  finally:
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)


@dataclasses.dataclass
class _Session:
  """What the rows of one invocation share; `row` handles one row."""
  recipe: str
  out_dir: pathlib.Path
  results_dir: pathlib.Path
  data_dir: pathlib.Path
  common: Tuple[Tuple[str, str], ...]
  deadline: Optional[float]
  dry_run: bool
  grace_s: float
  main: Tuple[str, ...]
  echo: Callable[[str], None]
  filed: List[Past]  # runs filed before this invocation
  this_run: List[Past] = dataclasses.field(default_factory=list)  # rows finished in it
  stop: _Stop = dataclasses.field(default_factory=_Stop)
  simulated_s: float = 0.0  # dry run: the estimated time of the rows it would run before

  def _done(self, outcome: Outcome) -> Outcome:
    self.echo(f'{outcome.row.spec}: {outcome.status}: {outcome.detail}')
    return outcome

  def _info(self, row: Row, config, command: Sequence[str]) -> dict:
    """row.json: what ran, under which recipe and overrides, and how to run it again."""
    common = [f'{k}={v}' for k, v in self.common]
    return {
        'row': row.spec, 'dirname': row.dirname, 'config': f'configs/{row.config}.py',
        'recipe': self.recipe, 'epochs': recipe_schedule(config, self.recipe)[0],
        'network': f'{config.dataset}/{config.model.name}',
        'recipe_overrides': [f'{k}={v}' for k, v in recipe_overrides(config, self.recipe)],
        'overrides': common, 'row_overrides': [f'{k}={v}' for k, v in row.overrides],
        'command': shlex.join(['python', *command[1:]] if command[0] == sys.executable
                              else command),
        'reproduce': shlex.join(['python', '-m', 'ssc_jax.reproduce', f'--rows={row.spec}',
                                 f'--recipe={self.recipe}', '--out=DIR'] +
                                ([f'--overrides={",".join(common)}'] if common else [])),
        'jax_version': _jax_version(),
    }

  def row(self, row: Row, config) -> Outcome:
    """Skips, files, declines or runs one row."""
    entry = self.results_dir / 'runs' / self.recipe / row.dirname
    if (entry / 'summary.json').is_file():
      return self._done(Outcome(row, 'skipped', f'already in {entry}'))
    workdir = self.out_dir / self.recipe / row.dirname
    command = main_command(row, recipe_overrides(config, self.recipe), self.common, workdir,
                           self.data_dir, self.main)
    info = self._info(row, config, command)
    if (workdir / 'summary.json').is_file():  # finished earlier, not filed: file it now
      if self.dry_run:
        return self._done(Outcome(row, 'would file', f'finished earlier in {workdir}'))
      card = json.loads((workdir / 'summary.json').read_text()).get('devices')
      file_run(workdir, entry, {**info, 'card': card, 'duration_s': None})
      return self._done(Outcome(row, 'filed', f'finished earlier in {workdir}'))
    if self.stop.received:
      return self._done(Outcome(row, 'not started', 'reproduce received SIGTERM'))
    seconds, basis = estimate_seconds(row, info['network'], info['epochs'], self.filed,
                                      self.this_run)
    estimate = f'estimated {seconds:.0f} s, {basis}' if seconds is not None else basis
    if self.deadline is not None:
      left = self.deadline - time.time() - self.simulated_s
      if left <= 0:
        return self._done(Outcome(row, 'not started', 'time budget spent'))
      if seconds is not None and seconds > left:
        return self._done(Outcome(row, 'not started',
                                  f'{estimate}, more than the {left:.0f} s left of the budget'))
    if self.dry_run:
      self.simulated_s += seconds or 0.0
      return self._done(Outcome(row, 'would run', f'{estimate}\n    {shlex.join(command)}',
                                seconds))
    return self._run(row, command, workdir, entry, info, estimate)

  def _run(self, row: Row, command: Sequence[str], workdir: pathlib.Path, entry: pathlib.Path,
           info: dict, estimate: str) -> Outcome:
    """Runs the main job of one row and files it if it finished."""
    self.echo(f'{row.spec}: running ({estimate}) in {workdir}')
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / 'console.log'
    started, started_utc = time.time(), _utc_now()
    code, stopped = run_process(command, log, self.deadline, self.stop, self.grace_s)
    seconds = time.time() - started
    if code != 0:
      return self._done(Outcome(row, 'failed', f'exit code {code}; see {log}\n{_tail(log)}'))
    if not (workdir / 'summary.json').is_file():
      why = ('exited without a summary.json' if not stopped else
             'stopped on SIGTERM' if self.stop.received else 'stopped at the deadline')
      return self._done(Outcome(row, 'stopped', f'{why}; its checkpoint is in {workdir}: the '
                                'same command with the same --out resumes it'))
    summary = json.loads((workdir / 'summary.json').read_text())
    file_run(workdir, entry, {**info, 'card': summary.get('devices'), 'started_utc': started_utc,
                              'finished_utc': _utc_now(), 'duration_s': seconds})
    self.this_run.append(Past(row.dirname, info['network'], info['epochs'], seconds,
                              f'{self.recipe}/{row.dirname}'))
    return self._done(Outcome(row, 'done', f'test top-1 {summary.get("test_top1")}, '
                              f'{seconds:.0f} s, filed in {entry}'))


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so the module imports cleanly)."""
  flags.DEFINE_string('rows', None, 'Comma-separated rows <config>[:<key>=<value>]... and sets '
                      f'({", ".join(ROW_SETS)}).')
  flags.DEFINE_enum('recipe', None, RECIPES, 'paper: each config as it is; short: scaled to '
                    f'{SHORT_EPOCHS} epochs.')
  flags.DEFINE_string('out', None, 'Scratch directory: the unpacked data and one workdir per row.')
  flags.DEFINE_float('time_budget_s', None, 'Start no row that would end after this many seconds; '
                     'stop a row still running then (SIGTERM; resumable).')
  flags.DEFINE_string('overrides', '', 'Comma-separated <key>=<value> for every row, e.g. '
                      'model.dtype=bfloat16.')
  flags.DEFINE_string('data', None, 'The CIFAR-10 JPEG archive or its unpacked folder (default: '
                      '<repo>/../shared/data/cifar10-jpeg.tar.xz or <repo>/shared/data/...).')
  flags.DEFINE_string('results', str(REPO / 'results'), 'Results root; finished rows go to '
                      '<results>/runs/<recipe>/<row>/.')
  flags.DEFINE_float('grace_s', 180.0, 'Seconds between SIGTERM and SIGKILL of a stopped row.')
  flags.DEFINE_bool('dry_run', False, 'Print what would run; run nothing, write nothing.')
  flags.mark_flags_as_required(['rows', 'recipe', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    rows = expand_rows(FLAGS.rows)
    common = [parse_override(o, '--overrides') for o in split_list(FLAGS.overrides)]
    outcomes = reproduce(rows, FLAGS.recipe, FLAGS.out, FLAGS.results, FLAGS.data, common,
                         FLAGS.time_budget_s, FLAGS.dry_run, FLAGS.grace_s)
  except ValueError as e:
    sys.exit(f'reproduce: {e}')
  print('\nrows:')
  for outcome in outcomes:
    print(f'  {outcome.row.spec}: {outcome.status}: {outcome.detail.splitlines()[0]}')
  if any(o.status == 'failed' for o in outcomes):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
