"""The (p, g) search: candidates from the solver's enumeration, proxy runs, halving, resume."""

import json
import pathlib
import subprocess
import sys
import time

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

from ssc_jax import budget
from ssc_jax import checkpointing
from ssc_jax import config_lib
from ssc_jax import search
from ssc_jax import tickets
from ssc_jax import train
from ssc_jax.data import device
from ssc_jax.data import sources

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = REPO / 'configs' / 'default.py'
VOLATILE = ('wall_time_s', 'images_per_second')  # the only figures a rerun may change


def default_config(**overrides):
  config = config_lib.load_config_module(DEFAULT).get_config()
  config.update(overrides)
  return config


# --- the enumeration, against counts from the spec's definitions ---------------

# (M, N, K, output side) of the digits network's layers (configs/default.py):
# conv0 stays dense; then 16, 32, 64 filters at 8x8, 4x4, 2x2; the Dense layer.
DIGITS_LAYERS = [(1, 16, 3, 8, None), (16, 16, 3, 8, 0), (16, 32, 3, 4, 1), (32, 32, 3, 4, 1),
                 (32, 64, 3, 2, 2), (64, 64, 3, 2, 2), (64, 10, 1, 1, None)]


def _reference_count(settings, taps, macs):
  """Kept and dense weights (or MACs) of the digits network, from SSC_SPEC.md's definitions."""
  kept = dense = 0
  for m, n, k, side, entry in DIGITS_LAYERS:
    scale = side * side if macs else 1
    dense += m * n * k * k * scale
    if entry is None:
      kept += m * n * k * k * scale
      continue
    g, p = settings['g'][entry], settings['p'][entry]
    c, o = np.arange(m)[:, None], np.arange(n)[None, :]
    same = (c * g // m == o * g // n) if g is not None else np.zeros((m, n), bool)
    positions = {'full': 9, 'cross': 5, 'x': 5}[taps]
    mix = ((c - o) % p == 0) & ~same if p is not None else np.zeros((m, n), bool)
    kept += (int(same.sum()) * positions + int(mix.sum())) * scale
  return kept, dense


@pytest.mark.parametrize('metric', ['kept', 'macs'])
@pytest.mark.parametrize('taps', ['full', 'cross'])
def test_combinations_hold_the_solver_pick_and_true_counts(metric, taps):
  config = default_config()
  config.model.taps = taps
  counts, groups, fixed = budget.settings_groups(
      config.model, 10, 1, macs_at=(8, 8) if metric == 'macs' else None)
  combos = list(tickets.combinations(counts, groups, fixed, 0.12))
  assert len({json.dumps(c.settings) for c in combos}) == len(combos) > 10
  best = min((c for c in combos if c.preferred), key=lambda c: c.score)
  ticket = tickets.solve(counts, groups, fixed, 0.12, 'digits_ssc')
  assert ticket.settings == best.settings
  for combo in combos[::7]:
    kept, dense = _reference_count(combo.settings, taps, macs=metric == 'macs')
    assert combo.fraction == pytest.approx(kept / dense, abs=1e-12)
  in_tolerance = [c for c in combos if abs(c.fraction - 0.12) <= tickets.TOLERANCE]
  assert len(in_tolerance) > len([c for c in in_tolerance if c.preferred])  # alternatives too


def test_macs_fraction_matches_the_traced_budget():
  config = default_config()
  (candidate,) = search.propose(config, 0.15, 1, 'macs', ['cross'])
  result = budget.budget(search.candidate_config(config, candidate))
  assert result.macs / result.dense_macs == pytest.approx(candidate.fraction, abs=1e-12)
  assert abs(candidate.fraction - 0.15) <= tickets.TOLERANCE


def test_spread_starts_at_the_pick_and_takes_the_far_ends():
  shares = [i / 8 for i in range(9)]
  scores = [(abs(s - 0.5),) for s in shares]  # the middle scores best
  preferred = [True] * 9
  assert search.spread(scores, shares, preferred, 3) == [4, 0, 8]
  assert search.spread(scores, shares, preferred, 5) == [4, 0, 8, 2, 6]
  preferred = [i != 4 for i in range(9)]  # the pick is the best-scored preferred one
  assert search.spread(scores, shares, preferred, 2) == [3, 8]


def test_propose_covers_the_trade_off_and_includes_the_solver_pick():
  config = default_config()
  candidates = search.propose(config, 0.10, 4, 'kept', ['full', 'cross'])
  assert [c.name for c in candidates] == [f'c{i}' for i in range(8)]
  for taps in ('full', 'cross'):
    mine = [c for c in candidates if c.taps == taps]
    assert len(mine) == 4 and len({json.dumps(c.settings) for c in mine}) == 4
    config.model.taps = taps
    solved = budget.solve_ticket(config.model, 10, 0.10, 1).settings
    assert [c.settings for c in mine if c.solver_pick] == [solved]
    shares = [c.mix_share for c in mine]
    assert shares == sorted(shares) and shares[-1] - shares[0] > 0.25  # not near-copies
    for c in mine:
      kept, dense = _reference_count(c.settings, taps, macs=False)
      assert c.fraction == pytest.approx(kept / dense) and abs(c.fraction - 0.10) <= 0.001


def test_unreachable_target_names_the_range():
  with pytest.raises(ValueError, match=r"--target=0\.005: .* digits_ssc with taps 'full' keeps "
                     r'that fraction of its weights within 0\.0025; its settings keep '
                     r'0\.0151 to 1\.0000'):
    search.propose(default_config(), 0.005, 3, 'kept', ['full'])
  with pytest.raises(ValueError, match=r'its MACs'):
    search.propose(default_config(), 0.001, 3, 'macs', ['cross'])


def test_proxy_config_scales_the_recipe_and_hides_test():
  config = config_lib.load_config_module(REPO / 'configs' / 'cifar10_vgg19_10.py').get_config()
  config.warmup_epochs = 5.0
  before = config.to_dict()
  assert config.full_train
  candidate = search.propose(config, 0.10, 1, 'kept', ['cross'])[0]
  proxy = search.proxy_config(config, candidate, 25, num_train_steps=100)
  assert (proxy.num_epochs, tuple(proxy.lr_boundaries_epochs), proxy.warmup_epochs) == (
      25, (10.0, 15.0, 20.0), 0.5)
  assert (proxy.full_train, proxy.eval_test, proxy.num_train_steps) == (False, False, 100)
  assert proxy.model.ticket is None and proxy.model.taps == 'cross'
  config_lib.check_config(proxy)
  assert config.to_dict() == before  # the searched config is left as it was


def test_eval_test_false_needs_a_validation_split():
  with pytest.raises(ValueError, match=r'config\.eval_test=False .*config\.full_train=False'):
    config_lib.check_config(default_config(eval_test=False, full_train=True))
  config_lib.check_config(default_config(eval_test=False))


def test_rungs():
  assert search.rung_sizes(3, 'halving') == [3, 2]
  assert search.rung_sizes(8, 'halving') == [8, 4, 2]
  assert search.rung_sizes(5, 'halving') == [5, 3, 2]
  assert search.rung_sizes(2, 'halving') == search.rung_sizes(2, 'full') == [2]
  assert search.rung_sizes(8, 'full') == [8]
  assert search.rung_steps(84, 3) == [21, 42, 84]


def test_bad_requests_and_a_changed_command_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r'config\.validation_fraction=0\.0'):
    search.search(default_config(validation_fraction=0.0), str(tmp_path), 0.1, epochs=1)
  with pytest.raises(ValueError, match=r"--shard='2/2'"):
    search.search(default_config(), str(tmp_path), 0.1, epochs=1, shard='2/2')
  with pytest.raises(ValueError, match=r'--metric'):
    search.search(default_config(), str(tmp_path), 0.1, epochs=1, metric='flops')
  with pytest.raises(ValueError, match=r'--taps'):
    search.search(default_config(), str(tmp_path), 0.1, epochs=1, taps=['diagonal'])
  request = dict(target=0.1, candidates=2, epochs=2, metric='kept', strategy='full',
                 taps=['full'])
  search.Search(default_config(), str(tmp_path), request, command='first')
  with pytest.raises(ValueError) as error:
    search.Search(default_config(batch_size=32), str(tmp_path), {**request, 'epochs': 3})
  assert '--epochs: 2 (DIR) vs 3 (this command)' in str(error.value)
  assert 'config.batch_size: 64 (DIR) vs 32 (this command)' in str(error.value)
  assert 'the command that started it: first' in str(error.value)
  search.Search(default_config(), str(tmp_path), request)  # the same command continues


def test_cli_refuses_full_train_and_names_the_range(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, '-m', 'ssc_jax.search', '--config=configs/default.py',
                           f'--workdir={tmp_path}', *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  out = run('--target=0.1', '--config.full_train=True')
  assert out.returncode == 2
  assert 'error: --config.full_train=True: the search holds out' in out.stderr
  out = run('--target=0.001')
  assert out.returncode == 2 and 'its settings keep 0.0151 to 1.0000' in out.stderr
  assert not (tmp_path / 'command.json').exists()


def test_without_shard():
  assert search._without_shard(['--a=1', '--shard=0/2', '--shard', '1/2', '--b']) == ['--a=1',
                                                                                     '--b']


# --- real searches on digits ---------------------------------------------------

SEARCH = dict(target=0.10, candidates=3, epochs=2, strategy='halving')


def search_config():
  return default_config(batch_size=128, eval_batch_size=150, log_every_steps=5)


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  """One persistent compilation cache for this module's searches (as the command line keeps
  one), and XLA without its expensive passes: compiling is most of a digits search."""
  previous = [jax.config.values[name] for name in (
      'jax_compilation_cache_dir', 'jax_disable_most_optimizations')]
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('compile_cache')))
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_compilation_cache_dir', previous[0])
  jax.config.update('jax_disable_most_optimizations', previous[1])
  compilation_cache.reset_cache()


@pytest.fixture(scope='module')
def searched(tmp_path_factory, compile_cache):
  """An uninterrupted halving search of 3 candidates; the splits it read."""
  del compile_cache
  workdir = tmp_path_factory.mktemp('search')
  read = []
  patch = pytest.MonkeyPatch()
  load_split = sources.load_split
  eval_batches = device.DevicePipeline.eval_batches
  patch.setattr(sources, 'load_split', lambda config, split: read.append(split) or
                load_split(config, split))
  patch.setattr(device.DevicePipeline, 'eval_batches',
                lambda self, split: read.append(f'eval:{split}') or eval_batches(self, split))
  started = time.perf_counter()
  try:
    result = search.search(search_config(), str(workdir), config_file=str(DEFAULT),
                           command='python -m ssc_jax.search (test)', **SEARCH)
  finally:
    patch.undo()
  print(f'\nthe search took {time.perf_counter() - started:.1f} s')
  return workdir, result, read


def _stable(rows, ignore=()):
  return [{k: v for k, v in row.items() if k not in VOLATILE + ignore} for row in rows]


def test_search_ranks_candidates_on_validation_only(searched):
  workdir, result, read = searched
  assert 'test' not in read and 'eval:test' not in read and 'eval:validation' in read
  assert json.loads((workdir / 'search.json').read_text()) == result
  ranked = result['ranked']
  assert sorted(r['candidate'] for r in ranked) == ['c0', 'c1', 'c2']
  assert [r['steps'] for r in ranked] == [20, 20, 10]  # 10 steps a proxy epoch, E = 2
  finalists = ranked[:2]
  assert [r['validation_accuracy'] for r in finalists] == sorted(
      (r['validation_accuracy'] for r in finalists), reverse=True)
  first_rung = {r['candidate']: json.loads(
      (workdir / 'candidates' / r['candidate'] / 'rung0.json').read_text()) for r in ranked}
  loser = ranked[2]['candidate']
  assert all(first_rung[loser]['validation_accuracy'] <= first_rung[r['candidate']]
             ['validation_accuracy'] for r in finalists)
  assert result['best'] == ranked[0] and 0.5 < ranked[0]['validation_accuracy'] <= 1.0
  assert (result['steps_trained'], result['full_steps']) == (50, 60)
  assert sum(r['solver_pick'] for r in ranked) == 1
  for row in ranked:
    assert abs(row['kept_fraction'] - 0.10) <= 0.001
    summary = json.loads((workdir / 'candidates' / row['candidate'] / 'summary.json').read_text())
    assert summary['test_top1'] is None and 'test_accuracy' not in summary
    assert summary['validation_accuracy'] == row['validation_accuracy']
  table = (workdir / 'search.md').read_text()
  assert table.count('\n| ') == 4 and '| 1 | ' + ranked[0]['candidate'] in table
  assert 'Steps trained: 50 of the 60' in table and 'Halving saves 17% of the steps' in table
  assert result['full_wall_time_s_estimate'] > 0


def test_best_config_loads_checks_and_trains(searched, tmp_path):
  workdir, result, _ = searched
  module = config_lib.load_config_module(workdir / 'best_config.py')
  config = module.get_config()
  config_lib.check_config(config)
  best = result['best']
  assert (config.model.g, config.model.p, config.model.taps) == (
      tuple(best['g']), tuple(best['p']), best['taps'])
  assert (config.num_epochs, config.batch_size, config.full_train) == (30, 128, False)
  assert 'python -m ssc_jax.search (test)' in module.__doc__
  assert f'validation accuracy {best["validation_accuracy"]:.4f}' in module.__doc__
  config.num_train_steps = 3
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['steps'] == 3 and summary['kept_fraction'] == pytest.approx(
      best['kept_fraction'])


class _StopAt:
  """Stands in for train.PreemptionSignal: the `run`-th run is told to stop at step `step`."""

  def __init__(self, run, step):
    self.run, self.step, self.runs, self.checks = run, step, 0, 0

  def __call__(self):
    self.runs += 1
    return self

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass

  @property
  def received(self):  # read once a step
    if self.runs != self.run:
      return False
    self.checks += 1
    return self.checks >= self.step


def test_killed_search_resumes_to_the_same_table(searched, tmp_path, monkeypatch):
  _, result, _ = searched
  calls, restored = [], []
  train_and_evaluate = train.train_and_evaluate
  restore = checkpointing.Checkpointer.restore

  def restore_and_record(self, state):
    state = restore(self, state)
    restored.append((self.directory.parent.name, int(state.step)))
    return state

  monkeypatch.setattr(train, 'train_and_evaluate', lambda config, workdir: calls.append(
      (pathlib.Path(workdir).name, config.num_train_steps)) or train_and_evaluate(config, workdir))
  monkeypatch.setattr(checkpointing.Checkpointer, 'restore', restore_and_record)
  # The second run (candidate c1's first rung) stops at step 6 of 10.
  monkeypatch.setattr(train, 'PreemptionSignal', _StopAt(run=2, step=6))
  run = lambda: search.search(search_config(), str(tmp_path), config_file=str(DEFAULT),
                              command='python -m ssc_jax.search (test)', **SEARCH)
  with pytest.raises(search.SearchInterrupted, match='c1 stopped at step 6'):
    run()
  assert (tmp_path / 'candidates' / 'c0' / 'rung0.json').exists()
  assert not (tmp_path / 'candidates' / 'c1' / 'rung0.json').exists()
  calls.clear()
  resumed = run()
  assert ('c0', 10) not in calls and ('c1', 10) in calls  # finished rungs are read back
  assert ('c1', 6) in restored  # the half-trained run resumed from its checkpoint
  assert _stable(resumed['ranked']) == _stable(result['ranked'])
  assert (resumed['steps_trained'], resumed['full_steps']) == (50, 60)


@pytest.mark.slow
def test_shards_then_gather_equal_full_and_the_halving_finalists(searched, tmp_path, monkeypatch):
  _, halving, _ = searched
  calls = []
  train_and_evaluate = train.train_and_evaluate
  monkeypatch.setattr(train, 'train_and_evaluate', lambda config, workdir: calls.append(
      pathlib.Path(workdir).name) or train_and_evaluate(config, workdir))
  run = lambda shard=None: search.search(search_config(), str(tmp_path), **{
      **SEARCH, 'strategy': 'full'}, shard=shard, config_file=str(DEFAULT))
  assert run('0/2') is None and calls == ['c0', 'c2']
  assert run('1/2') is None and calls == ['c0', 'c2', 'c1']
  result = run()
  assert calls == ['c0', 'c2', 'c1'] and len(result['ranked']) == 3
  assert (result['steps_trained'], result['full_steps']) == (60, 60)
  full = {r['candidate']: r for r in _stable(result['ranked'], ('rung',))}
  for row in _stable(halving['ranked'][:2], ('rung',)):  # the finalists end as under 'full'
    assert row == full[row['candidate']]
