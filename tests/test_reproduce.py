"""python -m ssc_jax.reproduce: rows, recipes, dry run, skip, filing, time budget, deadline.

Most tests run reproduce's real code path against a fake main job (a small
script that records its argv and writes what the main job writes), so they
take seconds; one slow test runs the real main job on a small CIFAR-10 folder.
"""

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from ssc_jax import config_lib
from ssc_jax import reproduce

REPO = pathlib.Path(__file__).resolve().parents[1]

# Writes what ssc_jax.main writes; FAKE_SECONDS: how long it "trains" (SIGTERM stops it like a
# preemption: exit 0, no summary); FAKE_FAIL: fail (exit 3) when the config path contains it.
FAKE_MAIN = '''
import json, os, pathlib, signal, sys, time
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
workdir = pathlib.Path(args['workdir'])
workdir.mkdir(parents=True, exist_ok=True)
(workdir / 'argv.json').write_text(json.dumps(sys.argv[1:]))
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print('fake main starting', flush=True)
end = time.time() + float(os.environ.get('FAKE_SECONDS', '0'))
while time.time() < end and not stop:
  time.sleep(0.02)
if stop:
  print('Preempted at step 7: checkpoint saved, exiting.')
  sys.exit(0)
if os.environ.get('FAKE_FAIL') and os.environ['FAKE_FAIL'] in args['config']:
  print('boom: the fake main failed')
  sys.exit(3)
record = {'step': 1, 'test_accuracy': 0.5, 'epoch': 1.0}
(workdir / 'metrics.jsonl').write_text(json.dumps(record) + '\\n')
(workdir / 'run.log').write_text('the full log\\n')
(workdir / 'summary.json').write_text(json.dumps({'test_top1': 0.5, 'devices': '1 x Fake GPU'}))
'''


@pytest.fixture
def env(tmp_path, monkeypatch):
  """(main command, data folder, out dir, results root) for a fake main job."""
  script = tmp_path / 'fake_main.py'
  script.write_text(FAKE_MAIN)
  data = tmp_path / 'data'
  (data / 'train').mkdir(parents=True)
  (data / 'test').mkdir()
  monkeypatch.setenv('FAKE_SECONDS', '0')
  return [sys.executable, str(script)], data, tmp_path / 'out', tmp_path / 'results'


def run(env, specs, recipe='short', **kwargs):
  main, data, out, results = env
  lines = []
  outcomes = reproduce.reproduce([reproduce.parse_row(s) for s in specs], recipe, str(out),
                                 str(results), str(data), main=main, echo=lines.append, **kwargs)
  return {o.row.spec: o for o in outcomes}, '\n'.join(lines)


def file_past_run(results, recipe, dirname, network, epochs, seconds):
  """A filed run whose row.json records its duration (what reproduce writes)."""
  entry = results / 'runs' / recipe / dirname
  entry.mkdir(parents=True)
  (entry / 'summary.json').write_text('{}')
  (entry / 'row.json').write_text(json.dumps({'recipe': recipe, 'dirname': dirname,
                                              'network': network, 'epochs': epochs,
                                              'duration_s': seconds}))


# --- rows and recipes --------------------------------------------------------
def test_row_syntax_and_directory_names():
  row = reproduce.parse_row('cifar10_resnet32_10:model.taps=full')
  assert row == reproduce.Row('cifar10_resnet32_10', (('model.taps', 'full'),))
  assert row.dirname == 'cifar10_resnet32_10-taps_full'
  assert row.spec == 'cifar10_resnet32_10:model.taps=full'
  odd = reproduce.parse_row("cifar10_vgg19_5:model.g=(1, 2,4,None):model.dtype='bfloat16'")
  assert odd.dirname == 'cifar10_vgg19_5-g_1_2_4_None-dtype_bfloat16'
  assert reproduce.split_list('a, b:model.g=(1,2),c:x=[3,4]') == ['a', 'b:model.g=(1,2)',
                                                                   'c:x=[3,4]']
  rows = reproduce.expand_rows('paper_cifar10,cifar10_resnet32_10,paper_cifar10_taps_full')
  assert len(rows) == 14 and rows[1].spec == 'cifar10_resnet32_10'
  for row in rows:
    assert row.config_path.is_file()
    assert all(c.isalnum() or c in '._-' for c in row.dirname)
  assert not (REPO / 'configs' / 'paper_cifar10.py').exists()


@pytest.mark.parametrize('spec, message', [
    ('cifar10_resnet32_10:model.taps', 'must be <key>=<value>'),
    ('cifar10_resnet32_10:1x=2', 'must be <key>=<value>'),
    ('cifar10/resnet32', 'file stem'),
])
def test_bad_row_syntax_is_named(spec, message):
  with pytest.raises(ValueError, match=message) as error:
    reproduce.parse_row(spec)
  assert repr(spec) in str(error.value)


def test_directory_collisions_are_refused():
  with pytest.raises(ValueError, match='would share the directory'):
    reproduce.expand_rows('cifar10_resnet32_10:model.dtype=a b,cifar10_resnet32_10:model.dtype=a_b')


def test_rows_are_checked_before_anything_runs(env):
  main, data, out, results = env
  for spec, message in [('cifar100_resnet32_10', "dataset 'cifar100'.*CIFAR-10 rows only"),
                        ('cifar10_resnet32_10:model.tapz=full', "'model.tapz' is not a key"),
                        ('cifar10_resnet32_1', 'did you mean cifar10_resnet32_10')]:
    with pytest.raises(ValueError, match=message):
      run(env, ['cifar10_resnet32_dense', spec])
  assert not out.exists() and not results.exists()


def test_short_recipe_scales_the_schedule():
  config = config_lib.load_config_module(REPO / 'configs' / 'cifar10_resnet32_10.py').get_config()
  assert (config.num_epochs, tuple(config.lr_boundaries_epochs)) == (250, (100, 150, 200))
  assert reproduce.recipe_overrides(config, 'paper') == []
  assert reproduce.recipe_overrides(config, 'short') == [('num_epochs', '30'),
                                                          ('lr_boundaries_epochs', '(12,18,24)')]
  config.num_epochs, config.lr_boundaries_epochs, config.warmup_epochs = 350, (150,), 7
  assert reproduce.recipe_overrides(config, 'short') == [
      ('num_epochs', '30'), ('lr_boundaries_epochs', '(12.8571,)'), ('warmup_epochs', '0.6')]
  with pytest.raises(ValueError, match='--recipe'):
    reproduce.recipe_overrides(config, 'long')


# --- dry run, runs, skips ------------------------------------------------------
def test_dry_run_prints_commands_and_writes_nothing(env, tmp_path):
  main, data, out, results = env
  outcomes, text = run(env, ['cifar10_resnet32_10', 'cifar10_vgg19_2:model.width=1'],
                       dry_run=True, common=[('model.dtype', 'bfloat16')])
  assert [o.status for o in outcomes.values()] == ['would run'] * 2
  for expected in ('--config=configs/cifar10_resnet32_10.py',
                   f'--workdir={out}/short/cifar10_resnet32_10 ',
                   f'--config.folder_dir={data} ', '--config.data_source=folder',
                   '--config.pipeline=device', '--config.num_epochs=30',
                   "'--config.lr_boundaries_epochs=(12,18,24)'",
                   '--config.model.dtype=bfloat16 --config.model.width=1'):
    assert expected in text, expected
  assert not out.exists() and not results.exists()
  # An archive is not unpacked by a dry run.
  archive = tmp_path / 'c.tar.xz'
  archive.write_bytes(b'')
  outcomes = reproduce.reproduce([reproduce.parse_row('cifar10_resnet32_10')], 'paper', str(out),
                                 str(results), str(archive), dry_run=True, echo=lambda _: None)
  assert outcomes[0].status == 'would run' and not out.exists()


def test_dry_run_command_line(env):
  main, data, out, results = env
  result = subprocess.run(
      [sys.executable, '-m', 'ssc_jax.reproduce', '--rows=paper_cifar10', '--recipe=paper',
       f'--out={out}', f'--data={data}', f'--results={results}', '--dry_run',
       '--overrides=model.dtype=bfloat16'], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.count(': would run:') == 16  # each row, then the closing list
  assert '--config=configs/cifar10_vgg19_2.py' in result.stdout
  assert '--config.num_epochs' not in result.stdout  # paper: the config as it is
  bad = subprocess.run([sys.executable, '-m', 'ssc_jax.reproduce', '--rows=cifar100_vgg19_10',
                        '--recipe=short', f'--out={out}', f'--data={data}', '--dry_run'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "row 'cifar100_vgg19_10'" in bad.stderr


def test_reproduce_imports_neither_matplotlib_nor_tensorflow():
  """The GPU machine has neither: reproduce and the main job it starts must not need them."""
  code = ('import sys; from ssc_jax import reproduce; '
          'print(sorted({"matplotlib", "tensorflow"} & set(sys.modules)))')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == '[]', result.stderr


def test_finished_rows_are_filed_and_then_skipped(env):
  main, data, out, results = env
  specs = ['cifar10_resnet32_dense', 'cifar10_resnet32_10:model.width=1']
  outcomes, _ = run(env, specs, common=[('model.dtype', 'bfloat16')])
  assert [o.status for o in outcomes.values()] == ['done', 'done']
  entry = results / 'runs' / 'short' / 'cifar10_resnet32_10-width_1'
  assert sorted(p.name for p in entry.iterdir()) == ['console.log', 'metrics.jsonl', 'row.json',
                                                     'run.log', 'summary.json']
  assert 'fake main starting' in (entry / 'console.log').read_text()
  info = json.loads((entry / 'row.json').read_text())
  assert info['row'] == specs[1] and info['recipe'] == 'short' and info['epochs'] == 30
  assert info['config'] == 'configs/cifar10_resnet32_10.py'
  assert info['row_overrides'] == ['model.width=1']
  assert info['overrides'] == ['model.dtype=bfloat16']
  assert info['card'] == '1 x Fake GPU' and info['duration_s'] > 0
  assert info['command'].endswith('--config.model.dtype=bfloat16 --config.model.width=1')
  argv = json.loads((out / 'short' / 'cifar10_resnet32_10-width_1' / 'argv.json').read_text())
  assert argv[-2:] == ['--config.model.dtype=bfloat16', '--config.model.width=1']
  assert shlex.split(info['command']) == ['python', main[1], *argv]  # the exact command

  for workdir in (out / 'short').iterdir():
    (workdir / 'argv.json').unlink()
  outcomes, _ = run(env, specs + ['cifar10_vgg19_2'])
  assert [o.status for o in outcomes.values()] == ['skipped', 'skipped', 'done']
  assert not list((out / 'short').glob('cifar10_resnet32*/argv.json'))  # not run again


def test_a_finished_workdir_not_yet_filed_is_filed_without_running(env):
  main, data, out, results = env
  workdir = out / 'paper' / 'cifar10_vgg19_5'
  workdir.mkdir(parents=True)
  (workdir / 'summary.json').write_text(json.dumps({'test_top1': 0.7, 'devices': '1 x Old'}))
  outcomes, _ = run(env, ['cifar10_vgg19_5'], recipe='paper')
  assert outcomes['cifar10_vgg19_5'].status == 'filed'
  assert not (workdir / 'argv.json').exists()
  info = json.loads((results / 'runs' / 'paper' / 'cifar10_vgg19_5' / 'row.json').read_text())
  assert info['card'] == '1 x Old' and info['epochs'] == 250


def test_a_failed_row_is_reported_and_the_next_runs(env, monkeypatch):
  main, data, out, results = env
  monkeypatch.setenv('FAKE_FAIL', 'vgg19_10')
  outcomes, _ = run(env, ['cifar10_vgg19_10', 'cifar10_vgg19_5'])
  assert outcomes['cifar10_vgg19_10'].status == 'failed'
  assert 'exit code 3' in outcomes['cifar10_vgg19_10'].detail
  assert 'boom: the fake main failed' in outcomes['cifar10_vgg19_10'].detail
  assert outcomes['cifar10_vgg19_5'].status == 'done'
  assert not (results / 'runs' / 'short' / 'cifar10_vgg19_10').exists()


# --- time budget -------------------------------------------------------------
def test_time_budget_uses_earlier_runs_to_decide(env):
  main, data, out, results = env
  # The same row filed under the paper recipe: 1000 s for 250 epochs -> 120 s for 30.
  file_past_run(results, 'paper', 'cifar10_vgg19_10', 'cifar10/vgg19', 250, 1000.0)
  specs = ['cifar10_vgg19_10', 'cifar10_resnet32_dense', 'cifar10_resnet32_10',
           'cifar10_vgg19_5']
  outcomes, text = run(env, specs, time_budget_s=60)
  assert outcomes['cifar10_vgg19_10'].status == 'not started'
  assert 'estimated 120 s, from paper/cifar10_vgg19_10' in outcomes['cifar10_vgg19_10'].detail
  # No earlier run of it or its network: it starts.
  assert outcomes['cifar10_resnet32_dense'].status == 'done'
  assert 'no earlier run to estimate from' in text
  # Estimated from the row of the same network finished in this invocation.
  assert outcomes['cifar10_resnet32_10'].status == 'done'
  assert 'from short/cifar10_resnet32_dense' in text
  # Same network as the filed vgg19 run (4 s an epoch): 120 s > the budget.
  assert outcomes['cifar10_vgg19_5'].status == 'not started'
  # The dry run takes the same decisions.
  dry, _ = run(env, specs, time_budget_s=60, dry_run=True)
  assert [o.status for o in dry.values()] == ['not started', 'skipped', 'skipped', 'not started']


def test_a_row_running_at_the_deadline_is_stopped_and_not_filed(env, monkeypatch):
  main, data, out, results = env
  monkeypatch.setenv('FAKE_SECONDS', '60')
  start = time.time()
  outcomes, _ = run(env, ['cifar10_resnet32_5', 'cifar10_resnet32_2'], time_budget_s=2,
                    grace_s=20)
  assert time.time() - start < 30
  stopped = outcomes['cifar10_resnet32_5']
  assert stopped.status == 'stopped' and 'stopped at the deadline' in stopped.detail
  assert 'Preempted at step 7' in (out / 'short' / 'cifar10_resnet32_5' / 'console.log').read_text()
  assert not (results / 'runs' / 'short' / 'cifar10_resnet32_5').exists()
  assert outcomes['cifar10_resnet32_2'].status == 'not started'
  assert outcomes['cifar10_resnet32_2'].detail == 'time budget spent'


def test_sigterm_to_reproduce_stops_the_running_row(env, monkeypatch):
  main, data, out, results = env
  monkeypatch.setenv('FAKE_SECONDS', '60')
  previous = signal.getsignal(signal.SIGTERM)
  workdir = out / 'short' / 'cifar10_resnet32_5'

  def send_sigterm_once_running():
    deadline = time.time() + 60
    while time.time() < deadline and not (workdir / 'argv.json').exists():
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=send_sigterm_once_running, daemon=True).start()
  outcomes, _ = run(env, ['cifar10_resnet32_5', 'cifar10_resnet32_2'], grace_s=20)
  assert outcomes['cifar10_resnet32_5'].status == 'stopped'
  assert outcomes['cifar10_resnet32_2'].detail == 'reproduce received SIGTERM'
  assert signal.getsignal(signal.SIGTERM) == previous


# --- the real main job -------------------------------------------------------
@pytest.mark.slow
def test_real_main_job_on_a_small_cifar_folder(tmp_path):
  """The command reproduce builds runs the real main job (recipe overrides included), and
  report reads what it files."""
  from test_data_utils import small_cifar  # pylint: disable=g-import-not-at-top
  data = small_cifar(tmp_path / 'cifar')
  results = tmp_path / 'results'
  command = [sys.executable, '-m', 'ssc_jax.reproduce', '--rows=cifar10_resnet32_10:model.width=1',
             '--recipe=short', f'--out={tmp_path / "out"}', f'--data={data}',
             f'--results={results}',
             '--overrides=num_train_steps=3,batch_size=32,eval_batch_size=50']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout + result.stderr
  entry = results / 'runs' / 'short' / 'cifar10_resnet32_10-width_1'
  summary = json.loads((entry / 'summary.json').read_text())
  assert summary['steps'] == 3 and 0 <= summary['test_top1'] <= 1
  hparams = next(json.loads(line)['hparams'] for line in (entry / 'metrics.jsonl').open()
                 if 'hparams' in line)
  assert hparams['num_epochs'] == '30' and hparams['lr_boundaries_epochs'] == '(12, 18, 24)'
  assert hparams['model.width'] == '1' and hparams['pipeline'] == 'device'
  report = subprocess.run([sys.executable, '-m', 'ssc_jax.report', str(results / 'runs'),
                           f'--out={results}'], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert report.returncode == 0, report.stderr
  assert '[cifar10_resnet32_10:model.width=1](runs/short/cifar10_resnet32_10-width_1/)' in \
      (results / 'README.md').read_text()
