"""Chooses (p, g) the paper's way: candidates from the budget, ranked on validation.

    python -m ssc_jax.search --config=configs/X.py --target=0.10 --workdir=DIR
        [--candidates=N] [--epochs=E] [--metric=kept|macs] [--strategy=full|halving]
        [--taps=cross,x,alternate,full] [--shard=i/n]

Candidates. The ticket solver's enumeration (`ssc_jax.tickets.combinations`)
gives the per-filter-count (g, p) (and p_1x1 for ResNet-50) that keep the
target fraction of the conv + Dense weights (`--metric=kept`) or of the MACs
at the dataset's input size (`--metric=macs`) within `tickets.TOLERANCE`. For
each spatial pattern of `--taps` (default: the config's `model.taps`) N of them
are taken (from those the solver counts as exact, within 0.001, where there are
N): the solver's own pick, then one at a time the one farthest in mix
share from those taken (ties to the solver's preference). The mix share is the
part of the KxK layers' kept count in the 1x1 mixing part: low for small
groups and sparse mixing, high for big groups and dense mixing.

Proxy training. Each candidate trains with the config's recipe scaled to E
epochs (`--epochs`, default a tenth of the config's): its learning-rate
boundaries and warm-up times E / num_epochs, `full_train=False` (the last
`validation_fraction` of train is held out) and `eval_test=False` (the test
split is never read). Candidates rank by validation accuracy, then by lower
validation loss.

Strategies. `full` trains every candidate for E epochs. `halving` (successive
halving) trains all for E / 2^(R-1) epochs, continues the better half (rounded
up) from their checkpoints for twice as long, and so on until two remain,
which train to E epochs; the better wins. Every run follows the E-epoch
schedule, so a finalist ends exactly as under `full`.

DIR holds `search.json` and `search.md` (the ranked table), `best_config.py`
(the winner with the config's full recipe: `python -m ssc_jax.main
--config=DIR/best_config.py --workdir=...`), `command.json` (what the search
was asked), `run.log` (the full log of the command line) and
`candidates/<name>/` (each candidate's workdir and its result per rung,
`rung<r>.json`). Rerunning the same command continues a killed
search: finished rungs are read back, a half-trained run resumes from its
checkpoint. A different command on the same DIR is refused, naming what
differs. `--shard=i/n` trains only the candidates whose index is i modulo n
(one job per device, host or array task, sharing DIR); the command without
`--shard` gathers them, trains what is missing and writes the outputs. The
command line keeps compiled programs in `DIR/compile_cache` (JAX's persistent
cache) unless JAX already has a cache directory, so continued runs do not
compile again. The console shows the table as it fills; the candidates' own
output goes to `DIR/run.log` (on the console too with --verbosity=0).
"""

import contextlib
import copy
import dataclasses
import json
import math
import os
import pathlib
import shlex
import sys
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from ssc_jax import budget
from ssc_jax import config_lib
from ssc_jax import console
from ssc_jax import errors
from ssc_jax import tickets
from ssc_jax import train
from ssc_jax.data import partition
from ssc_jax.data import sources
from ssc_jax.models.conv import G_P
from ssc_jax.ssc.structure import normalize_taps

METRICS = ('kept', 'macs')
STRATEGIES = ('full', 'halving')
_WHAT = {'kept': 'weights', 'macs': 'MACs'}
_SEARCH_KEYS = ('target', 'candidates', 'epochs', 'metric', 'strategy', 'taps')


class SearchInterrupted(RuntimeError):
  """A candidate's run stopped on SIGTERM; its checkpoint is saved."""


class ChangedSearchError(errors.UserError, ValueError):
  """DIR holds a search that another command started."""


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One setting of the network to train.

  Attributes:
    name: 'c<index>', its directory under DIR/candidates.
    index: position in the search's list (shards take index % n == i).
    taps: the spatial pattern (`config.model.taps`).
    settings: config fields 'g', 'p' (and 'p_1x1').
    fraction: kept fraction of the searched metric (weights or MACs).
    mix_share: part of the KxK layers' kept count in the 1x1 mixing part.
    solver_pick: whether `tickets.solve` gives these settings for this pattern.
  """
  name: str
  index: int
  taps: str
  settings: Dict[str, Tuple[Optional[int], ...]]
  fraction: float
  mix_share: float
  solver_pick: bool


def show(text: str) -> None:
  """Shows what the search tells its user (the table as it fills) on the console."""
  console.show('%s', text)


# --- candidates --------------------------------------------------------------


def _mix_shares(groups: List[tickets.SettingsGroup],
                pool: Sequence[tickets.Combination]) -> List[float]:
  """Of each combination: the part of the (g, p) layers' kept count in their 1x1 mixing part."""
  mixing: Dict[Tuple[int, tickets.Setting], int] = {}
  shares = []
  for combination in pool:
    kept = mixed = 0
    for index, (group, (count, setting)) in enumerate(zip(groups, combination.choice)):
      if group.field == G_P:
        if (index, setting) not in mixing:
          mixing[index, setting] = group.mixing(setting)
        kept += count
        mixed += mixing[index, setting]
    shares.append(mixed / kept)
  return shares


def spread(scores: Sequence[tuple], shares: Sequence[float], preferred: Sequence[bool],
           n: int) -> List[int]:
  """Indices of `n` entries: the best-scored preferred one, then farthest-point in share.

  Each next entry maximises its distance in `shares` to the nearest one taken;
  ties go to the lower score.
  """
  order = sorted(range(len(scores)), key=lambda i: scores[i])
  taken = [next(i for i in order if preferred[i])]
  while len(taken) < min(n, len(order)):
    rest = [i for i in order if i not in taken]
    taken.append(max(rest, key=lambda i: min(abs(shares[i] - shares[j]) for j in taken)))
  return taken


def propose(config: ml_collections.ConfigDict, target: float, n: int, metric: str,
            taps: Sequence[str]) -> List[Candidate]:
  """`n` candidates per pattern of `taps` that keep `target` of the `metric`.

  Raises ConfigError naming the reachable range where no setting is within
  `tickets.TOLERANCE` of the target.
  """
  num_classes, input_shape = budget.dataset_facts(config.dataset)
  found = []
  for pattern in taps:
    model_config = copy.deepcopy(config.model)
    model_config.taps = pattern
    counts, groups, fixed = budget.settings_groups(
        model_config, num_classes, input_shape[-1],
        macs_at=input_shape[:2] if metric == 'macs' else None)
    combos = list(tickets.combinations(counts, groups, fixed, target, source='--target'))
    pool = [c for c in combos if abs(c.fraction - target) <= tickets.TOLERANCE]
    exact = [c for c in pool if c.exact]
    pool = exact if len(exact) >= n else pool  # budgets as equal as the pool allows
    if not pool:
      closest = min(combos, key=lambda c: abs(c.fraction - target), default=None)
      raise errors.ConfigError(tickets.unreachable(
          '--target', target, f'{config.model.name} with taps {pattern!r}', groups, fixed,
          None if closest is None else closest.fraction, _WHAT[metric]))
    shares = _mix_shares(groups, pool)
    taken = spread([c.score for c in pool], shares, [c.preferred for c in pool], n)
    for i in sorted(taken, key=lambda i: shares[i]):
      found.append((pattern, pool[i].settings, pool[i].fraction, shares[i], i == taken[0]))
  return [Candidate(f'c{index}', index, *entry) for index, entry in enumerate(found)]


def candidate_config(config: ml_collections.ConfigDict,
                     candidate: Candidate) -> ml_collections.ConfigDict:
  """`config` with the candidate's pattern and settings (no ticket)."""
  config = copy.deepcopy(config)
  config.model.ticket = None
  config.model.taps = candidate.taps
  for field, value in candidate.settings.items():
    config.model[field] = value
  return config


def proxy_config(config: ml_collections.ConfigDict, candidate: Candidate, epochs: int,
                 num_train_steps: int = -1) -> ml_collections.ConfigDict:
  """The candidate's proxy run: the recipe scaled to `epochs`, validation only."""
  proxy = candidate_config(config, candidate)
  scale = epochs / config.num_epochs
  proxy.num_epochs = epochs
  proxy.lr_boundaries_epochs = tuple(b * scale for b in config.lr_boundaries_epochs)
  proxy.warmup_epochs = config.warmup_epochs * scale
  proxy.full_train = False
  proxy.eval_test = False
  proxy.num_train_steps = num_train_steps
  return proxy


def rung_sizes(n: int, strategy: str) -> List[int]:
  """Candidates trained in each rung: all once (`full`), halved down to two (`halving`)."""
  sizes = [n]
  while strategy == 'halving' and sizes[-1] > 2:
    sizes.append(math.ceil(sizes[-1] / 2))
  return sizes


def rung_steps(total_steps: int, rungs: int) -> List[int]:
  """Steps each rung trains to: doubling, the last `total_steps`."""
  return [max(1, round(total_steps / 2 ** (rungs - 1 - r))) for r in range(rungs)]


# --- the search --------------------------------------------------------------


def _json(value: Any) -> Any:
  """`value` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


def _write(path: pathlib.Path, text: str) -> None:
  """Writes `text` whole or not at all (process 0 only)."""
  if jax.process_index() != 0:
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + '.partial')
  partial.write_text(text)
  os.replace(partial, path)


def _parse_shard(shard: Optional[str]) -> Optional[Tuple[int, int]]:
  if shard is None:
    return None
  try:
    i, n = (int(v) for v in shard.split('/'))
  except ValueError:
    raise errors.ConfigError(f'--shard={shard!r} must be i/n with 0 <= i < n') from None
  if not 0 <= i < n:
    raise errors.ConfigError(f'--shard={shard!r} must be i/n with 0 <= i < n')
  return i, n


def check_request(config: ml_collections.ConfigDict, request: Dict[str, Any]) -> None:
  """Raises ConfigError naming any argument or config value the search cannot take."""
  config_lib.check_config(config)
  if not 0.0 < request['target'] <= 1.0:
    raise errors.ConfigError(f"--target={request['target']} must be in (0, 1]")
  for key in ('candidates', 'epochs'):
    if not isinstance(request[key], int) or request[key] < 1:
      raise errors.ConfigError(f'--{key}={request[key]!r} must be a positive int')
  if request['metric'] not in METRICS:
    raise errors.ConfigError(f"--metric={request['metric']!r} must be one of {METRICS}")
  if request['strategy'] not in STRATEGIES:
    raise errors.ConfigError(f"--strategy={request['strategy']!r} must be one of {STRATEGIES}")
  for pattern in request['taps']:
    try:
      normalize_taps(pattern, (3, 3), '--taps')
    except ValueError as error:
      raise errors.ConfigError(str(error)) from None
  if not config.validation_fraction:
    raise errors.ConfigError(
        f'config.validation_fraction={config.validation_fraction}: the search ranks '
        'candidates on a validation split held out of train; it needs validation_fraction > 0 '
        '(the paper holds out 0.1)')


def _differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
  """'name: saved (DIR) vs current (this command)' for each search argument or config key."""
  lines = [f'--{key}: {saved["search"].get(key)!r} (DIR) vs {current["search"][key]!r} '
           '(this command)' for key in _SEARCH_KEYS
           if saved['search'].get(key) != current['search'][key]]
  for key in sorted(set(saved['config']) | set(current['config'])):
    if saved['config'].get(key) != current['config'].get(key):
      lines.append(f'config.{key}: {saved["config"].get(key)!r} (DIR) vs '
                   f'{current["config"].get(key)!r} (this command)')
  return lines


class Search:
  """One search in one directory (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, request: Dict[str, Any],
               config_file: Optional[str] = None, command: Optional[str] = None,
               shard: Optional[str] = None, quiet_runs: bool = False):
    check_request(config, request)
    self.config = config
    self.quiet_runs = quiet_runs
    self.request = request
    self.dir = pathlib.Path(workdir)
    self.config_file = config_file
    self.shard = _parse_shard(shard)
    self.candidates = propose(config, request['target'], request['candidates'],
                              request['metric'], request['taps'])
    probe = proxy_config(config, self.candidates[0], request['epochs'])
    steps_per_epoch = partition.train_steps_per_epoch(sources.dataset_spec(probe).num_train,
                                                      probe.batch_size)
    self.total_steps = request['epochs'] * steps_per_epoch
    self.sizes = rung_sizes(len(self.candidates), request['strategy'])
    self.steps = rung_steps(self.total_steps, len(self.sizes))
    self.command = command or ''
    self._claim()
    self._facts = {c.name: budget.budget(candidate_config(config, c)) for c in self.candidates}

  def _claim(self) -> None:
    """Records the command in DIR/command.json, or refuses one that differs from it."""
    current = _json({'search': self.request, 'config': config_lib.flatten(self.config)})
    path = self.dir / 'command.json'
    if path.exists():
      saved = json.loads(path.read_text())
      differences = _differences(saved, current)
      if differences:
        raise ChangedSearchError(f'{self.dir} holds a search started by another command: '
                         + '; '.join(differences) + '. Use a new --workdir, or the command '
                         f'that started it: {saved.get("command")}')
      self.command = saved.get('command') or self.command
      return
    _write(path, json.dumps({**current, 'command': self.command,
                             'config_file': self.config_file}, indent=2) + '\n')

  def _record_path(self, candidate: Candidate, rung: int) -> pathlib.Path:
    return self.dir / 'candidates' / candidate.name / f'rung{rung}.json'

  def _train(self, candidate: Candidate, rung: int) -> Dict[str, Any]:
    """The candidate's result at `rung`: read back, or trained (resuming its checkpoint)."""
    path = self._record_path(candidate, rung)
    if path.exists():
      return json.loads(path.read_text())
    config = proxy_config(self.config, candidate, self.request['epochs'], self.steps[rung])
    if self.quiet_runs:
      show(f'training {candidate.name} to step {self.steps[rung]} ...')
    with console.warnings_only() if self.quiet_runs else contextlib.nullcontext():
      summary = train.train_and_evaluate(config, str(path.parent))
    if 'preempted_at_step' in summary:
      raise SearchInterrupted(
          f'{candidate.name} stopped at step {summary["preempted_at_step"]} (checkpoint saved); '
          'rerun the same command to continue the search')
    record = {'rung': rung, 'steps': summary['steps'],
              'validation_accuracy': summary['validation_accuracy'],
              'validation_loss': summary['validation_loss'],
              'wall_time_s': summary['wall_time_s'],
              'images_per_second': summary['images_per_second']}
    _write(path, json.dumps(record, indent=2) + '\n')
    return record

  def _mine(self, candidate: Candidate) -> bool:
    return self.shard is None or candidate.index % self.shard[1] == self.shard[0]

  def run(self) -> Optional[Dict[str, Any]]:
    """Trains the rungs; returns the search's result (written to DIR), or None for a shard
    that stopped before the end (the rest belongs to other shards)."""
    results: Dict[str, List[Dict[str, Any]]] = {c.name: [] for c in self.candidates}
    self._show_plan()
    survivors = list(self.candidates)
    for rung in range(len(self.steps)):
      for candidate in survivors:
        if self._mine(candidate) or self._record_path(candidate, rung).exists():
          results[candidate.name].append(self._train(candidate, rung))
          self._show_row(candidate, results[candidate.name][-1])
      waiting = [c.name for c in survivors if len(results[c.name]) <= rung]
      if waiting:
        show(f'rung {rung}: {", ".join(waiting)} belong to other shards; rerun without '
             '--shard once they are done to gather the search')
        return None
      ranked = sorted(survivors, key=lambda c: _rank_key(c, results[c.name][-1]))
      survivors = ranked[:self.sizes[rung + 1]] if rung + 1 < len(self.sizes) else ranked
    if self.shard is not None:
      show('every candidate is trained; rerun without --shard to write the table')
      return None
    return self._finish(results)

  def _show_plan(self) -> None:
    show(f'{len(self.candidates)} candidates of {self.config.model.name} on '
         f'{self.config.dataset} that keep {self.request["target"]} of the '
         f'{_WHAT[self.request["metric"]]}; {self.request["strategy"]}: ' + ', '.join(
             f'{size} to step {steps}' for size, steps in zip(self.sizes, self.steps))
         + f' ({self.request["epochs"]} epochs = {self.total_steps} steps)')
    show(_table_header())

  def _show_row(self, candidate: Candidate, record: Dict[str, Any]) -> None:
    show(_table_row(self._row(candidate, [record]), rank=''))

  def _row(self, candidate: Candidate, records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One line of the table: the candidate and its last result."""
    facts, last = self._facts[candidate.name], records[-1]
    return {
        'candidate': candidate.name, 'taps': candidate.taps, **candidate.settings,
        'kept_fraction': facts.kept_fraction, 'macs_fraction': facts.macs / facts.dense_macs,
        'macs': facts.macs, 'mix_share': candidate.mix_share,
        'solver_pick': candidate.solver_pick,
        'validation_accuracy': last['validation_accuracy'],
        'validation_loss': last['validation_loss'], 'rung': last['rung'],
        'steps': last['steps'], 'wall_time_s': sum(r['wall_time_s'] for r in records),
        'images_per_second': last['images_per_second'],
    }

  def _finish(self, results: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Ranks every candidate and writes search.json, search.md and best_config.py."""
    ranked = sorted(self.candidates, key=lambda c: (
        -len(results[c.name]),) + _rank_key(c, results[c.name][-1]))
    rows = [self._row(c, results[c.name]) for c in ranked]
    trained = sum(row['steps'] for row in rows)
    wall = sum(row['wall_time_s'] for row in rows)
    result = {
        'command': self.command, 'config_file': self.config_file, **self.request,
        'model': self.config.model.name, 'dataset': self.config.dataset,
        'rung_sizes': self.sizes, 'rung_steps': self.steps, 'ranked': rows,
        'best': rows[0], 'steps_trained': trained,
        'full_steps': self.total_steps * len(rows), 'wall_time_s': wall,
        'full_wall_time_s_estimate': self._full_wall_time(results),
    }
    result = _json(result)
    _write(self.dir / 'search.json', json.dumps(result, indent=2) + '\n')
    table = format_markdown(result)
    _write(self.dir / 'search.md', table)
    _write(self.dir / 'best_config.py', best_config_source(self, ranked[0], rows[0]))
    show('\n' + table)
    show(f'best: {rows[0]["candidate"]}; train it with the full recipe: python -m '
         f'ssc_jax.main --config={self.dir / "best_config.py"} --workdir=WORKDIR')
    return result

  def _full_wall_time(self, results: Dict[str, List[Dict[str, Any]]]) -> Optional[float]:
    """Wall time `full` would take: each candidate's first run (start-up and compiling
    included), then its remaining steps at that run's measured speed."""
    seconds = 0.0
    for records in results.values():
      first = records[0]
      if not first['images_per_second']:
        return None
      seconds += first['wall_time_s'] + (self.total_steps - first['steps']) * (
          self.config.batch_size / first['images_per_second'])
    return seconds


def _rank_key(candidate: Candidate, record: Dict[str, Any]) -> tuple:
  """Better validation accuracy first, then lower validation loss, then index."""
  return (-record['validation_accuracy'], record['validation_loss'], candidate.index)


# --- tables and the winner's config -------------------------------------------

_COLUMNS = ('rank', 'candidate', 'taps', 'g', 'p', 'p_1x1', 'kept %', 'MACs %', 'mix %',
            'val acc', 'val loss', 'steps', 'wall s')


def _settings_text(value) -> str:
  return '-' if value is None else ','.join('-' if v is None else str(v) for v in value)


def _cells(row: Dict[str, Any], rank) -> List[str]:
  name = row['candidate'] + (' *' if row['solver_pick'] else '')
  return [str(rank), name, str(row['taps']), _settings_text(row['g']),
          _settings_text(row['p']), _settings_text(row.get('p_1x1')),
          f'{100 * row["kept_fraction"]:.2f}', f'{100 * row["macs_fraction"]:.2f}',
          f'{100 * row["mix_share"]:.1f}', f'{row["validation_accuracy"]:.4f}',
          f'{row["validation_loss"]:.4f}', str(row['steps']), f'{row["wall_time_s"]:.1f}']


def _table_header() -> str:
  return '| ' + ' | '.join(_COLUMNS) + ' |\n|' + '---|' * 3 + '---:|' * (len(_COLUMNS) - 3)


def _table_row(row: Dict[str, Any], rank) -> str:
  return '| ' + ' | '.join(_cells(row, rank)) + ' |'


def format_markdown(result: Dict[str, Any]) -> str:
  """The ranked table and how it was made, as markdown."""
  rungs = ', '.join(f'{size} trained to step {steps}'
                    for size, steps in zip(result['rung_sizes'], result['rung_steps']))
  lines = [f'# (p, g) search: {result["model"]} on {result["dataset"]}', '']
  if result['command']:
    lines += [f'    {result["command"]}', '']
  lines += [f'Target: {result["target"]} of the {_WHAT[result["metric"]]} (within '
            f'{tickets.TOLERANCE}); {len(result["ranked"])} candidates; strategy '
            f'{result["strategy"]}: {rungs} ({result["epochs"]} epochs). Ranked by validation '
            "accuracy, then loss; `*` marks the solver's own pick; mix % is the part of the "
            "(g, p) layers' kept count in the 1x1 mixing part.", '', _table_header()]
  lines += [_table_row(row, rank) for rank, row in enumerate(result['ranked'], 1)]
  footer = (f'Steps trained: {result["steps_trained"]:,} of the {result["full_steps"]:,} that '
            f'training every candidate for {result["epochs"]} epochs takes; wall time '
            f'{result["wall_time_s"]:.1f} s')
  if result['strategy'] == 'halving' and result['full_wall_time_s_estimate']:
    saved = result['full_wall_time_s_estimate'] - result['wall_time_s']
    footer += (f'; strategy full: about {result["full_wall_time_s_estimate"]:.1f} s (each '
               "candidate's first run, then its remaining steps at the speed measured there). "
               f'Halving saves {1 - result["steps_trained"] / result["full_steps"]:.0%} of the '
               'steps and ' + (f'{saved:.1f} s' if saved >= 0 else
                               f'costs {-saved:.1f} s more: restarting the continued runs '
                               'outweighs the steps saved'))
  return '\n'.join(lines + ['', footer + '.']) + '\n'


def _config_overrides(search: Search) -> Dict[str, Any]:
  """Keys where the searched config differs from its file's (or `base()`'s) get_config()."""
  if search.config_file:
    start = config_lib.load_config_module(search.config_file).get_config()
  else:
    start = config_lib.base()
  before, after = config_lib.flatten(start), config_lib.flatten(search.config)
  skip = {'model.ticket', 'model.taps', 'model.g', 'model.p', 'model.p_1x1'}
  return {k: v for k, v in after.items()
          if k not in skip and _json(before.get(k)) != _json(v)}


def _searched_path(config_file: str) -> str:
  """Python for the searched config file's path: under the repository, relative to it."""
  path = pathlib.Path(config_file).resolve()
  repo = pathlib.Path(config_lib.__file__).resolve().parents[1]
  if not path.is_relative_to(repo):
    return repr(str(path))
  parts = ' / '.join(repr(part) for part in path.relative_to(repo).parts)
  return f'pathlib.Path(config_lib.__file__).resolve().parents[1] / {parts}'


def best_config_source(search: Search, candidate: Candidate, row: Dict[str, Any]) -> str:
  """best_config.py: the winner with the searched config's full recipe."""
  request = search.request
  settings = ', '.join(f'{k}={v}' for k, v in candidate.settings.items())
  summary = textwrap.fill(
      f'out of {len(search.candidates)} candidates that keep {request["target"]} of the '
      f'{_WHAT[request["metric"]]} (strategy {request["strategy"]}, {request["epochs"]} proxy '
      'epochs on the training part; the table is search.md next to this file): validation '
      f'accuracy {row["validation_accuracy"]:.4f} (loss {row["validation_loss"]:.4f}) after '
      f'{row["steps"]} steps. It keeps {100 * row["kept_fraction"]:.2f}% of the conv + Dense '
      f'weights and {100 * row["macs_fraction"]:.2f}% of the MACs.', 78)
  lines = [
      f'"""{search.config.model.name} on {search.config.dataset}, (g, p) chosen on validation: '
      f'taps {candidate.taps!r}, {settings}.', '', 'Chosen by', '', f'    {search.command}', '',
      summary, '', "Train it with the searched config's full recipe:", '',
      f'    python -m ssc_jax.main --config={search.dir.resolve() / "best_config.py"} '
      '--workdir=WORKDIR', '"""', '']
  if search.config_file:
    lines += ['import pathlib', '', 'from ssc_jax import config_lib', '',
              f'SEARCHED = {_searched_path(search.config_file)}', '', '',
              'def get_config():',
              '  config = config_lib.load_config_module(SEARCHED).get_config()']
  else:
    lines += ['from ssc_jax import config_lib', '', '',
              'def get_config():', '  config = config_lib.base()']
  lines += [f'  config.{key} = {value!r}' for key, value in _config_overrides(search).items()]
  lines += ['  config.model.ticket = None', f'  config.model.taps = {candidate.taps!r}']
  lines += [f'  config.model.{field} = {value!r}' for field, value in candidate.settings.items()]
  lines += ['  return config', '']
  return '\n'.join(lines)


def search(config: ml_collections.ConfigDict, workdir: str, target: float, *,
           candidates: int = 4, epochs: Optional[int] = None, metric: str = 'kept',
           strategy: str = 'full', taps: Optional[Sequence[str]] = None,
           shard: Optional[str] = None, config_file: Optional[str] = None,
           command: Optional[str] = None, quiet_runs: bool = False) -> Optional[Dict[str, Any]]:
  """Runs (or continues) a search; returns search.json's content (None: a shard stopped).

  `epochs` defaults to a tenth of config.num_epochs (at least 1), `taps` to
  the config's pattern. `config_file` (the searched config's path) is where
  best_config.py starts from (else `config_lib.base()` with every difference).
  `quiet_runs`: the console shows only warnings and errors of the candidates'
  runs (their full output stays in the log).
  """
  request = {
      'target': target, 'candidates': candidates,
      'epochs': epochs if epochs is not None else max(1, config.num_epochs // 10),
      'metric': metric, 'strategy': strategy,
      'taps': list(taps) if taps else [config.model.taps],
  }
  return Search(config, workdir, request, config_file, command, shard, quiet_runs).run()


# --- command line --------------------------------------------------------------


def define_flags() -> None:
  """The command-line flags; defined only when this module runs as a program."""
  config_flags.DEFINE_config_file('config', None, 'Config file to search (configs/*.py).')
  flags.DEFINE_string('workdir', None, 'Directory of the search (created; rerun to continue).')
  flags.DEFINE_float('target', None, 'Fraction of the weights (or MACs) to keep, in (0, 1].')
  flags.DEFINE_integer('candidates', 4, 'Candidates per spatial pattern.')
  flags.DEFINE_integer('epochs', None, "Proxy epochs E (default: a tenth of the config's).")
  flags.DEFINE_enum('metric', 'kept', METRICS, 'What --target counts: weights kept or MACs.')
  flags.DEFINE_enum('strategy', 'full', STRATEGIES, 'full: every candidate E epochs; halving: '
                    'successive halving up to E epochs.')
  flags.DEFINE_list('taps', None, "Spatial patterns to search (default: the config's).")
  flags.DEFINE_string('shard', None, 'i/n: train only candidates with index % n == i.')
  flags.mark_flags_as_required(['config', 'workdir', 'target'])


def _without_shard(args: Sequence[str]) -> List[str]:
  """The command-line arguments less --shard (=i/n, or i/n as the next argument)."""
  kept, skip = [], False
  for arg in args:
    if skip:
      skip = False
    elif arg == '--shard':
      skip = True
    elif not arg.startswith('--shard='):
      kept.append(arg)
  return kept


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  FLAGS = flags.FLAGS
  if config_flags.get_override_values(FLAGS['config']).get('full_train'):
    raise errors.ConfigError(
        '--config.full_train=True: the search holds out config.validation_fraction of train '
        "as validation and never reads test; drop the override (best_config.py keeps the "
        "config's full_train)")
  workdir = train.prepare_workdir(FLAGS.workdir)
  console.log_to_file(workdir, jax.process_index())
  if not jax.config.values['jax_compilation_cache_dir']:
    jax.config.update('jax_compilation_cache_dir', str(workdir / 'compile_cache'))
  argv_text = ' '.join(shlex.quote(a) for a in _without_shard(sys.argv[1:]))
  try:
    search(FLAGS.config, str(workdir), FLAGS.target, candidates=FLAGS.candidates,
           epochs=FLAGS.epochs, metric=FLAGS.metric, strategy=FLAGS.strategy, taps=FLAGS.taps,
           shard=FLAGS.shard, config_file=config_flags.get_config_filename(FLAGS['config']),
           command=f'python -m ssc_jax.search {argv_text}',
           quiet_runs=not console.full_log_on_console())
  except SearchInterrupted as stopped:  # like the main job: a saved stop is no failure
    show(str(stopped))


if __name__ == '__main__':
  define_flags()
  console.run(main)
