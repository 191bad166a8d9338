"""Several processes (jax.distributed on localhost, CPU + gloo) and the launch scripts.

The 2-process runs go through launch/local_multiprocess.sh, so the script is
tested for real; the TPU and SLURM scripts are tested in dry-run mode.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_train import REPO, run_main, saved_params  # pylint: disable=g-import-not-at-top,wrong-import-position

LAUNCH = REPO / 'launch'
FLAGS = ['--config.model.dtype=float32', '--config.checkpoint_every_steps=5',
         '--config.log_every_steps=5']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('', 0))
    return s.getsockname()[1]


def run_local(workdir, processes, devices, *flags, extra_env=None):
  """launch/local_multiprocess.sh: `processes` x `devices` CPU devices."""
  env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED='1', **(extra_env or {}))
  env.pop('XLA_FLAGS', None)
  return subprocess.run(
      ['bash', str(LAUNCH / 'local_multiprocess.sh'), '--config=configs/default.py',
       f'--workdir={workdir}', f'--num_processes={processes}',
       f'--devices_per_process={devices}', f'--port={free_port()}', '--', *flags],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def process_log(workdir, i):
  """What process i printed (the launcher keeps it in logs/)."""
  return (pathlib.Path(workdir) / 'logs' / f'process_{i}.log').read_text()


def run_log(workdir, i):
  """The full log of process i: run.log (process 0), run.process<i>.log."""
  return (pathlib.Path(workdir) / ('run.log' if i == 0 else f'run.process{i}.log')).read_text()


def assert_close(a, b):
  """Equal up to summation order: the cross-process (gloo) all-reduce adds in another
  order than one process does, and a few steps with batch norm amplify that (measured
  after 10 steps: at most 7e-3 relative on the small BN biases, 5e-4 absolute)."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    assert x.shape == y.shape
    np.testing.assert_allclose(x, y, atol=2e-3)
    assert np.linalg.norm(x - y) <= 2e-2 * np.linalg.norm(x) + 1e-6


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """10 steps as 2 processes x 2 devices and as 1 process x 4 devices."""
  root = tmp_path_factory.mktemp('multihost')
  two = run_local(root / 'two', 2, 2, '--config.num_train_steps=10', *FLAGS)
  assert two.returncode == 0, two.stdout + two.stderr + process_log(root / 'two', 0)[-3000:]
  one = run_main(root / 'one', '--config.num_train_steps=10', *FLAGS, devices=4)
  assert one.returncode == 0, one.stderr[-3000:]
  return root


def test_two_processes_match_one_process(runs):
  log0, log1 = run_log(runs / 'two', 0), run_log(runs / 'two', 1)
  assert 'process 0 of 2, 2 local / 4 global devices' in log0
  assert 'process 1 of 2, 2 local / 4 global devices' in log1
  # Only process 0 prints; both log everything.
  console0, console1 = process_log(runs / 'two', 0), process_log(runs / 'two', 1)
  for text in (console0, log0, log1):
    assert 'step 10/10' in text and 'eval  step 10' in text and 'Summary' in text
  assert 'step 10/10' not in console1 and 'Summary' not in console1
  # At step 5: later, max-pool ties on digits' flat regions may route a gradient
  # differently after a last-bit difference (see test_train.test_four_devices_match_one).
  assert_close(saved_params(runs / 'two', 5), saved_params(runs / 'one', 5))
  assert sorted(p.name for p in (runs / 'two' / 'checkpoints').iterdir()
                if p.name.isdigit()) == ['10', '5']
  two = json.loads((runs / 'two' / 'summary.json').read_text())
  one = json.loads((runs / 'one' / 'summary.json').read_text())
  assert two['devices'] == one['devices'] == '4 x cpu'
  # Step 10, past possible max-pool tie flips: a sanity bound; the parameters above are
  # the tight check.
  assert abs(two['test_loss'] - one['test_loss']) < 0.05
  # Files only from process 0: one metrics file, no per-process copies.
  lines = (runs / 'two' / 'metrics.jsonl').read_text().splitlines()
  assert sum('"step": 10' in line and 'train_loss' in line for line in lines) == 1


@pytest.mark.slow  # the 2-process run itself: test_two_processes_match_one_process
def test_checkpoints_move_between_process_counts(runs):
  """2 processes -> 1 process (1 device) and 1 process -> 2 processes (1 device each)."""
  resume = ['--config.num_train_steps=15', *FLAGS]
  to_one = runs / 'two_to_one'
  shutil.copytree(runs / 'two', to_one)
  single = run_main(to_one, *resume, devices=1)
  assert single.returncode == 0, single.stderr[-3000:]
  assert 'Resumed from' in single.stderr and 'from step 10' in single.stderr

  to_two = runs / 'one_to_two'
  shutil.copytree(runs / 'one', to_two)
  multi = run_local(to_two, 2, 1, *resume)
  assert multi.returncode == 0, multi.stdout + multi.stderr
  log0 = process_log(to_two, 0)
  assert 'Resumed from' in log0 and 'from step 10' in log0
  assert 'Resumed from' in run_log(to_two, 1)
  for workdir in (to_one, to_two):
    assert json.loads((workdir / 'summary.json').read_text())['steps'] == 15
    params = saved_params(workdir, 15)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_local_launcher_reports_a_failing_process(tmp_path):
  result = run_local(tmp_path, 2, 1, '--config.no_such_key=1')
  assert result.returncode != 0
  assert 'FAILED processes' in result.stderr and '0 (exit' in result.stderr


# --- launch scripts -------------------------------------------------------------

def launch(script, *args, env=None, dry_run=True):
  base = {k: v for k, v in os.environ.items()
          if not k.startswith(('TPU_', 'GCS_', 'SLURM_', 'ZONE', 'PROJECT', 'BUCKET'))}
  base.update(env or {})
  if dry_run:
    base['DRY_RUN'] = '1'
  return subprocess.run(['bash', str(LAUNCH / script), *args], cwd=REPO, env=base,
                        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize('script', ['tpu_pod.sh', 'gpu_slurm.sbatch', 'local_multiprocess.sh'])
def test_scripts_parse(script):
  assert subprocess.run(['bash', '-n', str(LAUNCH / script)]).returncode == 0


def test_local_launcher_dry_run_and_missing_settings():
  result = launch('local_multiprocess.sh', '--config=configs/default.py', '--workdir=/tmp/w',
                  '--num_processes=3', '--devices_per_process=2', '--port=1234', '--',
                  '--config.num_train_steps=7')
  assert result.returncode == 0, result.stderr
  for i in range(3):
    assert ('XLA_FLAGS=--xla_force_host_platform_device_count=2 ' in result.stdout and
            f'--coordinator_address=localhost:1234 --num_processes=3 --process_id={i} '
            '--config.num_train_steps=7' in result.stdout)
  assert 'nothing started' in result.stdout
  missing = launch('local_multiprocess.sh', '--workdir=/tmp/w')
  assert missing.returncode != 0 and 'CONFIG' in missing.stderr
  missing = launch('local_multiprocess.sh', '--config=configs/default.py')
  assert missing.returncode != 0 and 'WORKDIR' in missing.stderr


TPU_ENV = {'PROJECT': 'my-proj', 'ZONE': 'us-central2-b', 'TPU_NAME': 'ssc-pod',
           'ACCELERATOR_TYPE': 'v4-32', 'BUCKET': 'gs://my-bucket',
           'CONFIG': 'configs/default.py'}


def test_tpu_pod_dry_run():
  result = launch('tpu_pod.sh', 'all', '--config.num_train_steps=100', env=TPU_ENV)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert ('gcloud compute tpus tpu-vm create ssc-pod --project=my-proj --zone=us-central2-b '
          '--accelerator-type=v4-32 --version=') in out
  assert 'gcloud compute tpus tpu-vm ssh ssc-pod --project=my-proj --zone=us-central2-b --worker=all' in out
  assert 'pip install' in out and 'jax[tpu]' in out
  assert 'python -m ssc_jax.main --config=configs/default.py' in out
  assert '--workdir=gs://my-bucket/ssc_jax/ssc-pod' in out
  assert '--config.data_dir=gs://my-bucket/tensorflow_datasets' in out
  assert '--config.num_train_steps=100' in out
  assert 'tpu-vm delete' not in out
  delete = launch('tpu_pod.sh', 'delete', env=TPU_ENV)
  assert delete.returncode == 0 and 'gcloud compute tpus tpu-vm delete ssc-pod' in delete.stdout
  assert '--quiet' in delete.stdout


@pytest.mark.parametrize('missing', ['PROJECT', 'ZONE', 'BUCKET', 'CONFIG', 'TPU_NAME'])
def test_tpu_pod_refuses_missing_setting(missing):
  env = {k: v for k, v in TPU_ENV.items() if k != missing}
  result = launch('tpu_pod.sh', 'all', env=env)
  assert result.returncode != 0
  assert missing in result.stderr and 'gcloud compute' not in result.stdout


SLURM_ENV = {'CONFIG': 'configs/default.py', 'WORKDIR': '/shared/runs/ssc'}


def test_slurm_dry_run():
  result = launch('gpu_slurm.sbatch', '--config.num_train_steps=100', env=SLURM_ENV)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert 'srun' in out and '--ntasks-per-node' in out
  assert ('python -m ssc_jax.main --config=configs/default.py --workdir=/shared/runs/ssc '
          '--config.num_train_steps=100') in out
  assert '--coordinator_address' not in out  # jax.distributed reads SLURM's environment
  header = (LAUNCH / 'gpu_slurm.sbatch').read_text()
  assert '#SBATCH --nodes=' in header and '#SBATCH --gpus-per-node=' in header


@pytest.mark.parametrize('missing', ['CONFIG', 'WORKDIR'])
def test_slurm_refuses_missing_setting(missing):
  env = {k: v for k, v in SLURM_ENV.items() if k != missing}
  result = launch('gpu_slurm.sbatch', env=env)
  assert result.returncode != 0 and missing in result.stderr
