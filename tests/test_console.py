"""What a user sees: the console of a run, one-line user errors, safe resumes, TensorBoard."""

import functools
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssc_jax import checkpointing
from ssc_jax import config_lib
from ssc_jax import train

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_data_utils import HIDE_TENSORFLOW  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_train import REPO, default_config, run_main, saved_params  # pylint: disable=g-import-not-at-top,wrong-import-position

# A failed TensorStore read (a truncated checkpoint) may call back into orbax's closed
# event loop later, in any test: an unraisable exception, which the command line logs
# to run.log.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

# Lines of orbax, absl and JAX internals that belong in run.log only.
LIBRARY_LINES = re.compile(r'orbax|deleter|jax_array_handlers|Scheduling D2H|'
                           r'array_metadata_store|xla_bridge|logging_writer|^[IWE]\d{4} ')


def run_module(module, *args):
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def console_messages(caplog):
  return [r.getMessage() for r in caplog.records if r.name == 'ssc_jax.console']


# --- the console of the README's first command ---------------------------------------

def test_default_run_console(tmp_path):
  result = run_main(tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert result.stdout == ''
  # 630 steps: 32 progress lines, 30 evaluations, the config, parameters and summary.
  assert 100 < len(lines) < 130, result.stderr
  assert not [line for line in lines if LIBRARY_LINES.search(line)]
  assert not [line for line in lines if 'warning' in line.lower()]  # e.g. a plan's unknown layer
  assert 'Config, where it differs from config_lib.base():' in lines
  assert any('dataset=digits' in line and 'batch_size=64' in line for line in lines)
  assert 'Total: 15,834 -- 63,336 bytes' in lines  # the parameter overview
  progress = [line for line in lines if line.startswith('step ')]
  assert len(progress) == 630 // 20 + 1
  assert re.fullmatch(r'step 620/630  epoch 29\.52  loss \d\.\d{4}  acc \d\.\d{4}  lr 0\.0005  '
                      r'[\d,]+ img/s  ETA 0:00:0\d', progress[-2]), progress[-2]
  evaluations = [line for line in lines if line.startswith('eval ')]
  assert len(evaluations) == 30
  assert re.fullmatch(r'eval  step 630 \(epoch 30\): validation loss \d\.\d{4} acc \d\.\d{4} '
                      r'top5 \d\.\d{4} \| test loss \d\.\d{4} acc \d\.\d{4} top5 \d\.\d{4}',
                      evaluations[-1]), evaluations[-1]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['test_top1'] >= 0.97
  table = lines[lines.index(f'Summary ({tmp_path / "summary.json"}):') + 1:]
  assert len(table) == len(summary)
  assert any(re.fullmatch(rf'  test_top1 +{summary["test_top1"]:.4g}', row) for row in table)
  # The full log keeps what the console leaves out, and what it showed.
  log = (tmp_path / 'run.log').read_text()
  assert 'Deleted step' in log and 'checkpoint_manager.py' in log
  assert progress[-1] in log and evaluations[-1] in log


# --- errors the user caused: one line, exit status 2 --------------------------------

@pytest.fixture(scope='module')
def checkpointed(tmp_path_factory):
  """A workdir with a 2-step checkpoint of the default config."""
  workdir = tmp_path_factory.mktemp('checkpointed')
  train.train_and_evaluate(default_config(num_train_steps=2), str(workdir))
  return workdir


USER_ERRORS = {
    'unknown key': (['--config.model.gg=3'], r'--config\.model\.gg: the config has no key '
                    r'model\.gg; did you mean model\.g'),
    'bad value': (['--config.batch_size=0'], r'config\.batch_size=0 must be a positive int'),
    'bad g': (['--config.model.g=(1,4,200)'],
              r"config\.model\.g entry for 64 filters: \(g=200, p=4\) cannot be used"),
    'missing dataset': (['--config.dataset=cifar10', '--config.data_dir={tmp}/none'],
                        r"Dataset 'cifar10' not found in TFDS data_dir"),
    'missing config file': (['--config=configs/no_such_file.py'],
                            r'--config=configs/no_such_file\.py: cannot load the config file'),
    'flag value': (['--config.batch_size=abc'], r'flag --config\.batch_size=abc: invalid'),
}


@pytest.mark.parametrize('case', sorted(USER_ERRORS))
def test_user_error_is_one_line(tmp_path, case):
  flags, message = USER_ERRORS[case]
  result = run_main(tmp_path / 'run', *[f.format(tmp=tmp_path) for f in flags])
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(result.stderr.splitlines()) == 1, result.stderr
  assert re.match('error: ' + message, result.stderr), result.stderr


def test_unwritable_workdir_is_one_line(tmp_path):
  (tmp_path / 'file').write_text('')
  result = run_main(tmp_path / 'file' / 'run')
  assert result.returncode == 2
  assert re.fullmatch(r'error: --workdir=\S+/file/run: cannot write there .*\n', result.stderr)


def test_refused_resume_is_one_line_debug_and_verbosity_show_more(checkpointed):
  result = run_main(checkpointed, '--config.batch_size=32')
  assert result.returncode == 2
  assert re.fullmatch(r'error: .* of another experiment: batch_size: 64 \(checkpoint\) vs 32 '
                      r'\(this run\)\. .*--allow_changes=batch_size .*\n', result.stderr)
  debug = run_main(checkpointed, '--config.batch_size=32', '--debug')
  assert debug.returncode != 0 and 'Traceback (most recent call last)' in debug.stderr
  assert 'checkpointing.ChangedConfigError' in debug.stderr
  # --verbosity puts the full log (here orbax's INFO lines) on the console.
  verbose = run_main(checkpointed, '--config.batch_size=32', '--verbosity=0')
  assert verbose.returncode == 2 and 'checkpoint_manager.py' in verbose.stderr
  assert verbose.stderr.endswith(result.stderr)


def test_budget_user_errors_are_one_line():
  for flag, message in (('--config.model.gg=3', 'did you mean model.g'),
                        ('--config.model.g=(1,4,200)', 'g=200 is out of range'),
                        ('--target=0.00001', 'error: --target=1e-05: no per-filter-count'),
                        ('--config.model.ticket=2.0', 'error: config.model.ticket=2.0: the target')):
    result = run_module('ssc_jax.budget', '--config=configs/default.py', flag)
    assert result.returncode == 2 and result.stdout == ''
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr


# --- a damaged checkpoint ------------------------------------------------------------

def truncate_arrays(step_dir: pathlib.Path) -> None:
  """Cuts every array data file of a checkpoint to half its size."""
  files = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
  assert files
  for path in files:
    os.truncate(path, path.stat().st_size // 2)


def test_truncated_latest_checkpoint_is_moved_aside(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  config = functools.partial(default_config, checkpoint_every_steps=2)
  train.train_and_evaluate(config(num_train_steps=4), str(tmp_path))
  checkpoints = tmp_path / 'checkpoints'
  assert sorted(int(p.name) for p in checkpoints.iterdir()) == [2, 4]
  truncate_arrays(checkpoints / '4')
  damaged = sorted(str(p.relative_to(checkpoints / '4')) for p in (checkpoints / '4').rglob('*'))

  summary = train.train_and_evaluate(config(num_train_steps=5), str(tmp_path))
  assert summary['steps'] == 5
  warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(re.match(r'Checkpoint step 4 cannot be read \(ValueError: OUT_OF_RANGE: .*\): '
                      r'moved to \S+/checkpoints_unreadable/4; trying the previous one', w)
             for w in warning), warning
  assert f'Resumed from {checkpoints} at step 2.' in console_messages(caplog)
  aside = tmp_path / 'checkpoints_unreadable' / '4'
  assert sorted(str(p.relative_to(aside)) for p in aside.rglob('*')) == damaged
  assert sorted(int(p.name) for p in checkpoints.iterdir()) == [2, 4, 5]
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(saved_params(tmp_path, 4)))

  # None readable: a one-line user error; every checkpoint is moved, none deleted.
  for step in (2, 4, 5):
    truncate_arrays(checkpoints / str(step))
  with pytest.raises(checkpointing.NoReadableCheckpointError,
                     match=r'no checkpoint in \S+ can be read: moved .*/5, .*/4\.1, .*/2 aside'):
    train.train_and_evaluate(config(num_train_steps=6), str(tmp_path))
  assert list(checkpoints.iterdir()) == []
  assert sorted(p.name for p in (tmp_path / 'checkpoints_unreadable').iterdir()) == [
      '2', '4', '4.1', '5']


# --- a resume that would train another experiment ------------------------------------

def test_changed_resume_is_refused_naming_the_keys(checkpointed):
  before = sorted(str(p) for p in (checkpointed / 'checkpoints').rglob('*'))
  changed = default_config(num_train_steps=3, batch_size=32, full_train=True)
  with pytest.raises(checkpointing.ChangedConfigError,
                     match=r'full_train: False \(checkpoint\) vs True \(this run\); batch_size: '
                           r'64 \(checkpoint\) vs 32 \(this run\)\..*'
                           r'--allow_changes=full_train,batch_size'):
    train.train_and_evaluate(changed, str(checkpointed))
  assert sorted(str(p) for p in (checkpointed / 'checkpoints').rglob('*')) == before
  with pytest.raises(checkpointing.ChangedConfigError) as refused:
    train.train_and_evaluate(changed, str(checkpointed), allow_changes=['full_train'])
  assert 'batch_size: 64' in str(refused.value) and 'full_train' not in str(refused.value)
  with pytest.raises(ValueError, match='num_epoch is not a key a resume compares'):
    train.train_and_evaluate(changed, str(checkpointed), allow_changes=['num_epoch'])


def test_allowed_change_resumes(tmp_path, checkpointed, caplog):
  caplog.set_level(logging.INFO)
  workdir = tmp_path / 'run'
  shutil.copytree(checkpointed / 'checkpoints' / '2', workdir / 'checkpoints' / '2')
  config = default_config(num_train_steps=4, num_epochs=40, lr_boundaries_epochs=(20, 35))
  summary = train.train_and_evaluate(config, str(workdir),
                                     allow_changes=['num_epochs', 'lr_boundaries_epochs'])
  assert summary['steps'] == 4
  messages = console_messages(caplog)
  assert any(m.startswith('Resuming step 2 with changes allowed by --allow_changes: '
                          'num_epochs: 30 (checkpoint) vs 40 (this run); lr_boundaries_epochs: '
                          '[15, 25] (checkpoint) vs [20, 35] (this run)') for m in messages)
  assert f'Resumed from {workdir / "checkpoints"} at step 2.' in messages
  # The new checkpoint records the new values (a resume compares with them).
  saved = json.loads((workdir / 'checkpoints' / '4' / 'config' / 'metadata').read_text())
  assert checkpointing.changed_keys(saved, config) == []
  assert (saved['num_epochs'], saved['lr_boundaries_epochs']) == (40, [20, 35])


def test_changed_keys_reads_old_checkpoints():
  """A key an old checkpoint lacks counts as base()'s default; model.dtype is not compared."""
  config = default_config()
  saved = json.loads(json.dumps(config.to_dict()))
  del saved['label_smoothing']
  saved['model']['dtype'] = 'bfloat16'
  assert checkpointing.changed_keys(saved, config) == []
  config.label_smoothing = 0.1
  config.model.p = (None, 2, 2)
  assert checkpointing.changed_keys(saved, config) == [
      ('model.p', [None, 2, 4], [None, 2, 2]), ('label_smoothing', 0.0, 0.1)]
  assert set(checkpointing.EXPERIMENT_KEYS) - {'model', 'weight_decay_on'} <= set(
      config_lib.base().keys())


# --- TensorBoard without TensorFlow ---------------------------------------------------

_TENSORBOARD_SCRIPT = HIDE_TENSORFLOW + '''
import json
from ssc_jax import config_lib, train
from tensorboard.backend.event_processing import event_accumulator as ea
config = config_lib.load_config_module('configs/default.py').get_config()
config.num_train_steps, config.log_every_steps = 3, 1
train.train_and_evaluate(config, sys.argv[1])
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
acc.Reload()
out = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}
histograms = {tag: [e.step for e in acc.Tensors(tag)] for tag in acc.Tags()['tensors']
              if tag.endswith('/kernel')}
hparams = acc.PluginTagToContent('hparams')
print(json.dumps(dict(scalars=out, histograms=histograms, hparams=len(hparams),
                      tensorflow='tensorflow' in sys.modules)))
'''


def test_tensorboard_without_tensorflow(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', _TENSORBOARD_SCRIPT, str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  read = json.loads(result.stdout.splitlines()[-1])
  assert not read['tensorflow']
  assert read['hparams'] == 1
  assert sorted(read['histograms']) == [f'conv{i}/kernel' for i in range(6)] + ['dense/kernel']
  assert all(steps == [3] for steps in read['histograms'].values())
  written = {}
  for line in (tmp_path / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    for key, value in record.items():
      if key not in ('step', 'hparams'):
        written.setdefault(key, []).append([record['step'], value])
  assert set(written) == set(read['scalars'])
  assert {'train_loss', 'learning_rate', 'test_accuracy', 'images_per_sec'} <= set(written)
  for tag, values in written.items():
    np.testing.assert_allclose(read['scalars'][tag], values, rtol=1e-6, err_msg=tag)
