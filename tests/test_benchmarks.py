"""The benchmark scripts run and print the tables they promise (no speed is asserted)."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from ssc_jax.ssc import autotune
from ssc_jax.ssc import layout as layout_lib
from ssc_jax.ssc import structure

REPO = pathlib.Path(__file__).resolve().parents[1]
ACCEPTANCE = REPO / 'benchmarks' / 'gpu_acceptance.sh'


def _number(cell: str) -> float:
  return float(cell.strip().replace(',', '').rstrip('x'))


def test_pipeline_against_train_step_table():
  result = subprocess.run(
      [sys.executable, 'benchmarks/input_pipeline.py', '--skip_pipelines',
       '--train_config=configs/default.py', '--train_steps=2', '--repeats=1', '--warmup=1',
       '--batch_size=32'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert ('| config | device pipeline | train step, fixed batch | step fed by pipeline '
          '| pipeline / step |') in lines
  rows = [line for line in lines if line.startswith('| default |')]
  assert len(rows) == 1, result.stdout
  pipeline, alone, fed, ratio = (_number(c) for c in rows[0].strip('|').split('|')[1:])
  assert min(pipeline, alone, fed) > 0
  assert abs(ratio - pipeline / alone) <= 0.05 + 0.01 * ratio  # the column is their quotient
  assert not any(line.startswith('| pipeline') for line in lines)  # --skip_pipelines


def _table_rows(stdout: str, first: str):
  return [line.strip('|').split('|') for line in stdout.splitlines() if line.startswith(f'| {first}')]


@pytest.mark.slow
def test_network_speed_table():
  """One SSC config against its dense config, ratios the quotient of the times."""
  result = subprocess.run(
      [sys.executable, 'benchmarks/network_speed.py', '--configs=cifar10_resnet32_10', '--batch=2',
       '--repeats=1', '--lowering=taps'], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  dense, = _table_rows(result.stdout, 'cifar10_resnet32_dense ')
  ssc, = _table_rows(result.stdout, 'cifar10_resnet32_10 ')
  train_ratio = _number(ssc[3]) / _number(dense[3])
  assert abs(_number(ssc[7]) - train_ratio) <= 0.01 + 0.01 * train_ratio
  assert abs(_number(ssc[9]) - 0.184) < 0.001  # MAC fraction under 'cross'


@pytest.mark.slow
def test_layer_speed_table(tmp_path):
  """Every distinct SSC layer shape of a config, each lowering named, and the tuned choice."""
  result = subprocess.run(
      [sys.executable, 'benchmarks/layer_speed.py', '--configs=cifar10_resnet32_10', '--batch=2',
       '--repeats=1', '--lowerings=dense,taps'], cwd=REPO, capture_output=True, text=True,
      timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _table_rows(result.stdout, 'cifar10_resnet32_10 ')
  assert len(rows) == 5  # 32->32, 32->64/2, 64->64, 64->128/2, 128->128
  for row in rows:
    assert 'dense: ' in row[10] and 'taps: ' in row[10] and '(' in row[11]


def test_cost_rule_table(tmp_path):
  """The rule's picks priced by a cache file's measurements, against the tuned choice and dense:
  train-step times where the tuner timed that composition, else the passes summed."""
  layer = 'cpu|cpu|x1|b8|16x16|32->32|k3x3|s1x1|pad((1, 1), (1, 1))|g4|p4|cross|float32'
  key = autotune.LayerKey.from_id(layer)
  rule = autotune.rule(key, layout_lib.layout(structure.ssc_structure(32, 32, 3, 4, 4, 'cross')))
  parts = {'dense': 10.0, 'shifts': 9.0, 'split': 8.0, 'kxk:taps': 2.0, 'kxk:grouped': 6.0,
           'kxk:sliced': 3.0, 'mix:grouped+einsum': 1.5, 'mix:grouped+matmul': 0.5}
  ms = {which: parts for which in autotune.PASSES}
  timed = dict(ms, training={'dense,dense,dense': 25.0, 'shifts,shifts,shifts': 20.0})
  cache = tmp_path / 'cache.json'
  cache.write_text(json.dumps({'format': 1, 'entries': {
      layer: {'choice': ['shifts'] * 3, 'passes': list(autotune.PASSES), 'ms': timed},
      layer.replace('b8', 'b7'): {'choice': list(rule), 'passes': list(autotune.PASSES),
                                  'ms': ms},
      layer.replace('b8', 'b9'): {'choice': ['dense'], 'passes': ['forward'],  # eval only
                                  'ms': {'forward': parts}}}}))
  result = subprocess.run([sys.executable, 'benchmarks/cost_rule.py', f'--cache={cache}',
                           '--platform=cpu'], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rule_ms = sum(autotune.ms_of(parts, name) for name in rule)
  timed_row, = _table_rows(result.stdout, '8 ')
  assert timed_row[7].strip() == ', '.join(rule)
  assert timed_row[8].strip() == f'~{rule_ms:.2f}'  # that composition was not timed
  assert [_number(c) for c in timed_row[9:11]] == [20.0, 25.0]
  summed_row, = _table_rows(result.stdout, '7 ')
  assert [c.strip() for c in summed_row[8:11]] == [f'~{rule_ms:.2f}', f'~{rule_ms:.2f}', '~30.00']
  assert 'Totals: rule' in result.stdout and 'of 2 layers slower than dense' in result.stdout


def _acceptance(*args, cwd=REPO):
  return subprocess.run(['bash', str(ACCEPTANCE), *args], cwd=cwd, capture_output=True,
                        text=True, timeout=60)


def test_gpu_acceptance_dry_run(tmp_path):
  archive = tmp_path / 'cifar10-jpeg.tar.xz'
  archive.write_bytes(b'')
  result = _acceptance(f'--out={tmp_path}/out', f'--archive={archive}', '--dry-run')
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert '--train_config=configs/cifar10_resnet32_10.py --dtype=bfloat16' in out
  for config in ('cifar10_resnet32_10', 'cifar10_resnet32_dense'):
    assert (f'-m ssc_jax.main --config=configs/{config}.py --workdir={tmp_path}/out/{config} '
            f'--config.data_source=folder --config.folder_dir={tmp_path}/out/cifar10-jpeg '
            '--config.pipeline=device --config.num_epochs=15 --config.model.dtype=bfloat16') in out
  assert not (tmp_path / 'out').exists()  # a dry run writes nothing
  # Relative paths are the caller's, although the commands run from the repository root.
  relative = _acceptance('--out=rel', f'--archive={archive.name}', '--dry-run', cwd=tmp_path)
  assert relative.returncode == 0, relative.stderr
  assert f'--workdir={tmp_path}/rel/cifar10_resnet32_10 ' in relative.stdout
  assert f' {archive} {tmp_path}/rel/cifar10-jpeg' in relative.stdout


def test_gpu_acceptance_refuses_bad_settings(tmp_path):
  archive = tmp_path / 'a.tar.xz'
  archive.write_bytes(b'')
  missing_out = _acceptance(f'--archive={archive}', '--dry-run')
  assert missing_out.returncode == 2 and '--out' in missing_out.stderr
  no_archive = _acceptance(f'--out={tmp_path}', f'--archive={tmp_path}/nothing.tar.xz')
  assert no_archive.returncode == 2 and 'nothing.tar.xz' in no_archive.stderr
  bad_epochs = _acceptance(f'--out={tmp_path}', f'--archive={archive}', '--epochs=0')
  assert bad_epochs.returncode == 2 and '--epochs' in bad_epochs.stderr
  bad_dtype = _acceptance(f'--out={tmp_path}', f'--archive={archive}', '--dtype=float16')
  assert bad_dtype.returncode == 2 and '--dtype' in bad_dtype.stderr
  (tmp_path / 'cifar10_resnet32_dense').mkdir()  # a run there would resume, not start afresh
  existing = _acceptance(f'--out={tmp_path}', f'--archive={archive}', '--dry-run')
  assert existing.returncode == 2 and 'cifar10_resnet32_dense exists' in existing.stderr
  assert subprocess.run(['bash', '-n', str(ACCEPTANCE)]).returncode == 0


def test_network_profile_table():
  """The op kinds of a traced train step, largest first; YNNPACK's matmuls among them."""
  result = subprocess.run(
      [sys.executable, 'benchmarks/network_profile.py', '--config=default', '--calls=1',
       '--top=50'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r'^wall \d+\.\d ms per call \(median of 1, untraced\); XLA ops (\d+\.\d) ms',
                   result.stdout, re.M), result.stdout
  rows = _table_rows(result.stdout, '')[1:]  # below the header
  kinds = [row[0].strip() for row in rows]
  ms = [_number(row[1]) for row in rows]
  assert len(rows) > 3 and ms == sorted(ms, reverse=True) and ms[-1] >= 0
  assert not any(re.search(r'\.\d+$', kind) for kind in kinds)  # numbers dropped: kinds
  shares = [_number(row[2].strip().rstrip('%')) for row in rows]
  assert abs(sum(shares) - 100) < 1  # --top covers every kind here


def test_residual_recompute_table():
  """One row per mode with its gradient time and the optimized HLO's counts."""
  result = subprocess.run(
      [sys.executable, 'benchmarks/residual_recompute.py', '--blocks=2', '--batch=4', '--size=8',
       '--channels=8', '--repeats=1'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r'^# residual recompute, .*2 blocks, batch 4, 8x8, 8 channels', result.stdout,
                   re.M), result.stdout
  rows = _table_rows(result.stdout, '')[1:]
  assert [row[0].strip() for row in rows] == ['plain', 'barrier', 'divide']
  for row in rows:
    ms, fusions, barriers, largest = (_number(cell) for cell in row[1:])
    assert ms > 0 and fusions >= 0 and barriers >= 0
    assert (largest > 0) == (fusions > 0)  # a transpose fusion calls a computation of ops


def test_speed_scripts_refuse_a_misspelled_lowering():
  result = subprocess.run(
      [sys.executable, 'benchmarks/layer_speed.py', '--configs=cifar10_resnet32_10',
       '--lowerings=dense,tap'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "--lowerings: 'tap' not a lowering; each must be 'dense', 'shifts'" in result.stderr
  for script in ('network_speed.py', 'network_profile.py'):
    result = subprocess.run([sys.executable, f'benchmarks/{script}', '--lowering=taps2'], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, script
    assert "--lowering='taps2' must be 'auto' or 'dense', 'shifts'" in result.stderr, script


@pytest.mark.slow
def test_inference_speed_table():
  pytest.importorskip('onnxruntime', reason="needs the '[export]' extra")
  result = subprocess.run(
      [sys.executable, 'benchmarks/inference_speed.py', '--configs=cifar10_resnet32_10',
       '--runtimes=xla,onnxruntime', '--latency_runs=3', '--batch_runs=1'],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith('| cifar10_resnet32_10 |')]
  assert [row.split('|')[2].strip() for row in rows[:2]] == ['xla', 'onnxruntime']
  for row in rows[:2]:
    cells = row.strip('|').split('|')
    ssc, dense = (float(cells[i].split('(')[0]) for i in (2, 3))
    assert _number(cells[4]) == pytest.approx(ssc / dense, abs=0.01)
  assert 'batch 1 not met' in rows[2] or 'batch 1 met' in rows[2]  # the summary's verdict


def test_inference_speed_refuses_unknown_runtimes_and_configs():
  for flag, message in (('--runtimes=tensorrt', 'not among xla,stablehlo,onnxruntime,openvino'),
                        ('--configs=cifar10_resnet99', 'no config cifar10_resnet99')):
    result = subprocess.run([sys.executable, 'benchmarks/inference_speed.py', flag], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
