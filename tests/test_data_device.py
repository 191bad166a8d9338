"""The device-resident pipeline: identical batches on 1 and 4 (simulated CPU)
devices (also on a 2x2 ('data', 'model') mesh), and no TensorFlow needed."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_data_utils import CIFAR_ARCHIVE, CIFAR_DIR, HIDE_TENSORFLOW, REPO
from test_data_utils import id_folder, small_cifar

# Runs in a fresh interpreter (XLA_FLAGS must be set before jax starts).
_SCRIPT = textwrap.dedent('''
    import json, sys
    if {block_tf}:
      exec({hide!r})
    import jax, numpy as np
    import ssc_jax.data as data_lib
    from ssc_jax import config_lib
    args = json.loads(sys.argv[1])
    mesh = jax.make_mesh(args['mesh'], ('data', 'model')[:len(args['mesh'])])
    out = {{}}
    for name, overrides in args['configs'].items():
      config = config_lib.base()
      config.update(overrides)
      data = data_lib.create_input(config, mesh)
      stream = data.train_batches(args['start'])
      for s in range(args['steps']):
        batch = next(stream)
        assert batch['image'].sharding.spec[0] == 'data'
        assert len(batch['image'].sharding.device_set) == jax.device_count()
        for k, v in batch.items():
          out[f'{{name}}/train{{s}}/{{k}}'] = np.asarray(v)
      for s, batch in enumerate(data.eval_batches('test')):
        for k, v in batch.items():
          out[f'{{name}}/test{{s}}/{{k}}'] = np.asarray(v)
    if len(args['mesh']) == 1 and jax.device_count() > 1:
      config.batch_size = 2 * jax.device_count() + 2
      try:
        data_lib.create_input(config, mesh)
        raise AssertionError('indivisible batch_size accepted')
      except ValueError as e:
        assert 'batch_size' in str(e) and str(jax.device_count()) in str(e), e
    print('tensorflow' in sys.modules)
    np.savez(args['out'], **out)
''')


def _run(tmp_path, devices: int, configs: dict, block_tf: bool = False,
         start: int = 0, steps: int = 3, mesh=None):
  mesh = mesh or [devices]
  out = tmp_path / f'batches_{"x".join(map(str, mesh))}_{start}.npz'
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  args = json.dumps(dict(configs=configs, out=str(out), start=start,
                         steps=steps, mesh=mesh))
  result = subprocess.run(
      [sys.executable, '-c',
       _SCRIPT.format(block_tf=block_tf, hide=HIDE_TENSORFLOW), args],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(out)), result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
  """Pipelines to compare; CIFAR-10 JPEG only where the shared copy exists."""
  ids = id_folder(tmp_path_factory.mktemp('ids'))
  common = dict(pipeline='device', data_source='folder', seed=7)
  configs = {
      'ids': dict(common, dataset='digits', folder_dir=ids, batch_size=20,
                  eval_batch_size=12),
      'digits': dict(pipeline='device', dataset='digits', batch_size=64,
                     eval_batch_size=100),
  }
  if os.path.isfile(CIFAR_ARCHIVE) or os.path.isdir(CIFAR_DIR):
    configs['cifar'] = dict(common, dataset='cifar10',
                            folder_dir=small_cifar(tmp_path_factory.mktemp('cifar')),
                            batch_size=16, eval_batch_size=24)
  return configs


def test_one_and_four_devices_give_identical_batches(tmp_path, configs):
  one, _ = _run(tmp_path, 1, configs, start=8)
  four, _ = _run(tmp_path, 4, configs, start=8)
  two_by_two, _ = _run(tmp_path, 4, configs, start=8, mesh=[2, 2])
  assert one.keys() == four.keys() == two_by_two.keys()
  assert {f'{name}/train2/image' for name in configs} | {'digits/test2/mask'} <= one.keys()
  for key in one:
    np.testing.assert_array_equal(one[key], four[key], err_msg=key)
    np.testing.assert_array_equal(one[key], two_by_two[key], err_msg=key)
  # Eval padding: the test split of 'ids' (100) in batches of 12.
  mask = np.concatenate([one[f'ids/test{s}/mask'] for s in range(9)])
  assert mask.sum() == 100 and 'ids/test9/mask' not in one


def test_runs_without_tensorflow(tmp_path, configs):
  batches, tf_loaded = _run(tmp_path, 1, configs, block_tf=True, steps=1)
  assert tf_loaded == 'False'
  assert batches['digits/train0/image'].shape == (64, 8, 8, 1)
  if 'cifar' in configs:
    assert batches['cifar/train0/image'].shape == (16, 32, 32, 3)
