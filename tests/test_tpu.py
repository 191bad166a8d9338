"""Compiling for TPU with no TPU attached: the HLO cost reader, the estimate-ranked tuner,
`python -m ssc_jax.aot`. Tests marked `tpu` need libtpu (the '[tpu]' extra, Python 3.12);
`tests/tpu_checks.sh` runs them in a venv that has it."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from ssc_jax import hlo_cost
from ssc_jax.ssc import autotune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HLO = """HloModule jit_step, entry_computation_layout={(bf16[8,4]{1,0})->bf16[8,4]{1,0}}

%fused_conv (param_0: bf16[8,4], param_1: bf16[4,4]) -> (f32[4], bf16[8,4]) {
  %param_0 = bf16[8,4]{1,0} parameter(0)
  %param_1 = bf16[4,4]{1,0} parameter(1)
  %convolution.1 = bf16[8,4]{1,0} convolution(%param_0, %param_1), dim_labels=bf_io->bf
  %reduce.2 = f32[4]{0} reduce(%convolution.1, %c), dimensions={0}, to_apply=%add
  ROOT %tuple = (f32[4]{0}, bf16[8,4]{1,0}) tuple(%reduce.2, %convolution.1)
}

%fused_add (param_0.1: bf16[8,4]) -> bf16[8,4] {
  %param_0.1 = bf16[8,4]{1,0} parameter(0)
  ROOT %add.3 = bf16[8,4]{1,0} add(%param_0.1, %param_0.1)
}

ENTRY %main (p0: bf16[8,4], p1: bf16[4,4]) -> bf16[8,4] {
  %p0 = bf16[8,4]{1,0} parameter(0)
  %p1 = bf16[4,4]{1,0} parameter(1)
  %fusion.1 = (f32[4]{0}, /*index=1*/bf16[8,4]{1,0}) fusion(%p0, %p1), kind=kOutput, calls=%fused_conv, backend_config={"estimated_cycles":"1000"}
  %get-tuple-element.1 = bf16[8,4]{1,0} get-tuple-element(%fusion.1), index=1
  %all-reduce.1 = (f32[4]{0}, f32[16]{0}) all-reduce(%get-tuple-element.1, %p0), replica_groups={}, to_apply=%add
  %copy-start.1 = (bf16[8,4]{1,0}, bf16[8,4]{1,0}, u32[]) copy-start(%p0)
  %copy-done.1 = bf16[8,4]{1,0} copy-done(%copy-start.1)
  %and.1 = pred[] and(%x, %y)
  ROOT %fusion.2 = bf16[8,4]{1,0} fusion(%get-tuple-element.1), kind=kLoop, calls=%fused_add, backend_config={"estimated_cycles":"250"}
}
"""


def test_hlo_cost_reads_the_entry_computation():
  cycles, estimated, ops, by_kind, collectives = hlo_cost.parse(_HLO)
  assert (cycles, estimated) == (1250, 2)
  assert ops == 4  # two fusions, the all-reduce, the scalar 'and'; no bookkeeping
  assert by_kind == {'convolution': 1000, 'elementwise': 250}
  assert collectives == {'all-reduce': (1, 4 * 4 + 16 * 4)}


def test_hlo_cost_needs_an_entry():
  with pytest.raises(ValueError, match='no ENTRY computation'):
    hlo_cost.parse('HloModule empty\n')


def test_cache_serves_the_same_layer_at_the_same_batch_per_device(tmp_path):
  key = autotune.LayerKey('tpu', 'TPU v5 lite', 4, 128, (8, 8), 16, 16, (3, 3), (1, 1),
                          ((1, 1), (1, 1)), 4, 2, 'cross', 'bfloat16')
  shipped = autotune.Cache(tmp_path / 'shipped.json')
  shipped.put({key.id: {'choice': ['dense'] * 3, 'passes': list(autotune.PASSES),
                        'est_cycles': {}}})
  cache = autotune.Cache(tmp_path / 'user.json', (shipped,))
  wider = autotune.dataclasses.replace(key, devices=16, batch=512)  # 32 per device, too
  other = autotune.dataclasses.replace(key, devices=16, batch=128)
  assert cache.get(wider.id) == autotune.Choice('dense', 'dense', 'dense')
  assert cache.get(other.id) is None
  cache.put({wider.id: {'choice': ['split'] * 3, 'passes': list(autotune.PASSES)}})
  assert cache.get(wider.id).forward == 'split'  # the user's own entry comes first
  assert cache.get(key.id).forward == 'split'  # and serves the same work per device


def test_committed_caches_parse_and_name_real_lowerings():
  paths = sorted(autotune.SHIPPED.glob('*.json'))
  assert {p.stem for p in paths} >= {'tpu_v5e', 'tpu_v4'}
  for path in paths:
    entries = autotune.Cache(path).entries
    assert entries, path
    for key_id, entry in entries.items():
      if key_id.startswith('network|'):
        continue
      key = autotune.LayerKey.from_id(key_id)
      assert key.platform == 'tpu' and 'est_cycles' in entry, key_id
      for name in entry['choice']:
        assert autotune.lowerings.is_name(name), (key_id, name)


# --- with libtpu --------------------------------------------------------------------------


def _libtpu():
  pytest.importorskip('libtpu', reason="needs libtpu: the '[tpu]' extra (tests/tpu_checks.sh)")
  from ssc_jax import tpu  # pylint: disable=g-import-not-at-top
  tpu.offline_environment()
  return tpu


def _aot(*flags, cache=None):
  env = dict(os.environ, SSC_JAX_AUTOTUNE_CACHE=str(cache)) if cache else None
  return subprocess.run([sys.executable, '-m', 'ssc_jax.aot', *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


@pytest.mark.tpu
def test_aot_default_config_json(tmp_path):
  _libtpu()
  result = _aot('--config=configs/default.py', '--topology=v5e:2x2', '--json',
                cache=tmp_path / 'cache.json')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert (report['config'], report['topology'], report['devices']) == ('default', 'v5e:2x2', 4)
  assert report['batch'] == 64 and report['device_kind'] == 'TPU v5 lite'
  for side in (report, report['dense']):
    for step in ('train', 'eval'):
      program = side[step]
      assert program['est_cycles'] > 0 and program['flops'] > 0 and program['bytes'] > 0
      assert 0 < program['estimated_share'] <= 1 and program['fits'] is True
      assert program['peak_bytes'] < report['hbm_bytes']
  assert report['train']['collectives']['all-reduce']['count'] >= 1  # the gradient all-reduce
  ratio = report['train']['est_cycles'] / report['dense']['train']['est_cycles']
  assert report['vs_dense']['train']['est_cycles'] == pytest.approx(ratio)


@pytest.mark.tpu
def test_aot_resnet32_table_multi_host_topology(tmp_path):
  _libtpu()
  result = _aot('--config=configs/cifar10_resnet32_10.py', '--topology=v5e:4x4', '--batch=32',
                '--config.autotune=False', '--config.model.dtype=bfloat16',
                cache=tmp_path / 'cache.json')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'v5e:4x4: 16 chips (TPU v5 lite, 16 GiB each), global batch 32' in result.stdout
  assert 'SSC / dense, train: est. cycles' in result.stdout


@pytest.mark.tpu
@pytest.mark.parametrize('flags,message', [
    (('--topology=v9:2x2',), "--topology='v9:2x2' must be <generation>:<chips per dimension>"),
    (('--topology=v5e:2x2', '--batch=6'), 'config.batch_size=6 must be a multiple of the 4 chips'),
    (('--topology=v5e:2x2', '--lowering=taps4'), "--lowering='taps4' must be 'auto' or"),
    (('--topology=v5e:2x2', '--batch=8388608'), 'does not fit the memory of a chip'),
])
def test_aot_errors_are_one_line(flags, message, tmp_path):
  _libtpu()
  result = _aot('--config=configs/default.py', *flags, cache=tmp_path / 'cache.json')
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]


@pytest.mark.tpu
def test_estimate_tuning_writes_the_keys_a_tpu_run_reads(tmp_path):
  tpu = _libtpu()
  from ssc_jax import ssc_structure  # pylint: disable=g-import-not-at-top
  from ssc_jax.ssc import geometry, layout  # pylint: disable=g-import-not-at-top
  cache = autotune.Cache(tmp_path / 'cache.json')
  lay = layout.layout(ssc_structure(16, 16, 3, 4, 2, 'cross'))
  geo = geometry.geometry((8, 8), 3, 1, 'SAME')
  with autotune.scoring(tpu.Estimator(tpu.topology_devices('v5e:2x2'))):
    key = autotune.layer_key(lay, geo, 32, jnp.bfloat16)
    plan = autotune.tune({key.id: (key, lay, geo)}, batch_divisor=4, cache=cache)
  assert key.id.startswith('tpu|TPU v5 lite|x4|b32|8x8|16->16|')
  entry = autotune.Cache(tmp_path / 'cache.json').entries[key.id]
  scores = entry['est_cycles']
  assert set(autotune.PASSES) <= set(scores) <= set(autotune.PASSES) | {'training'}
  assert all(v > 0 for per_pass in scores.values() for v in per_pass.values())
  assert autotune.Choice(*entry['choice']) == plan.choices[key.id]
  if 'training' in scores:  # several compositions of the per-pass picks, scored as a step
    assert entry['choice'] == min(scores['training'], key=scores['training'].get).split(',')
  else:  # the per-pass picks compose one way only
    assert entry['choice'] == [autotune.best(scores[which])[0] for which in autotune.PASSES]


def _seed_config(name):
  from ssc_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_module(os.path.join(ROOT, 'configs', f'{name}.py')).get_config()
  config.model.dtype = 'bfloat16'  # the committed caches' dtype
  return config


def _assert_caches_answer(names, topologies, tmp_path, monkeypatch):
  """Each config's and dense twin's plan comes from the committed caches alone."""
  tpu = _libtpu()
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'cache.json'))
  for topology in topologies:
    devices = tpu.topology_devices(topology)
    for name in names:
      config = _seed_config(name)
      assert tpu.cache_answers(config, devices), (topology, name)
      assert tpu.cache_answers(tpu.dense_twin(config), devices), (topology, name, 'dense twin')
  assert not (tmp_path / 'cache.json').exists()  # nothing was tuned


@pytest.mark.tpu
def test_committed_caches_start_a_tpu_run_tuned(tmp_path, monkeypatch):
  _assert_caches_answer(['cifar10_resnet32_10', 'cifar10_vgg19_10'], ['v5e:2x2', 'v4:2x2x1'],
                        tmp_path, monkeypatch)
  tpu = _libtpu()
  config = _seed_config('cifar10_resnet32_10')
  config.batch_size = 8  # 2 images a chip: a batch the caches never saw
  assert not tpu.cache_answers(config, tpu.topology_devices('v5e:2x2'))


@pytest.mark.tpu
@pytest.mark.slow  # about 4 min: every seed config traced on two topologies
def test_committed_caches_hold_every_seed_config(tmp_path, monkeypatch):
  names = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, 'configs'))
                 if name.endswith('.py') and name != 'default.py'
                 and not name.endswith('_dense.py'))
  assert len(names) == 26
  _assert_caches_answer(names, ['v5e:2x2', 'v4:2x2x1'], tmp_path, monkeypatch)


@pytest.mark.tpu
@pytest.mark.slow  # 30 s: the benchmark scripts; bash tests/tpu_checks.sh --slow runs it
def test_tpu_benchmark_tables(tmp_path):
  _libtpu()
  env = dict(os.environ, SSC_JAX_AUTOTUNE_CACHE=str(tmp_path / 'cache.json'))
  layers = subprocess.run(
      [sys.executable, 'benchmarks/tpu_layers.py', '--configs=default',
       '--lowerings=dense,split'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert layers.returncode == 0, layers.stderr[-3000:]
  rows = [line.strip('|').split('|') for line in layers.stdout.splitlines()
          if line.startswith('| ') and 'est. cycles' not in line]
  dense = [r for r in rows if r[1].strip() == 'dense conv']
  assert len(dense) == 4 and all(r[3].strip() == '1.00x' for r in dense)  # 4 SSC layer shapes
  assert len(rows) == 12 and all('%' in r[4] for r in rows)  # where the cycles go
  table = subprocess.run(
      [sys.executable, 'benchmarks/tpu_estimates.py', '--configs=default'], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=900)
  assert table.returncode == 0, table.stderr[-3000:]
  row = [line for line in table.stdout.splitlines() if line.startswith('| default |')][0]
  cells = [c.strip() for c in row.strip('|').split('|')]
  train, dense_train = (float(cells[i].replace(',', '')) for i in (2, 3))
  assert cells[4] == f'{train / dense_train:.2f}x' and cells[-1] == '-'
