"""The budget tool: exact counts, traced tables, the command line and the ticket solver."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ssc_jax import budget
from ssc_jax import config_lib
from ssc_jax import ssc_structure

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('m,n,k', [(64, 128, 3), (128, 128, 3), (100, 37, 3), (512, 512, 1), (3, 16, 3)])
@pytest.mark.parametrize('taps', ['full', 'cross', 'alternate'])
def test_structure_counts_equal_mask(m, n, k, taps):
  """The closed-form counts that the budget and the solver use equal the mask's non-zeros."""
  for g in (None, 1, 2, 3, 5, 7, 15, 16):
    for p in (None, 1, 2, 3, 4, 13, 25):
      if (g is None and p is None) or (g is not None and g > min(m, n)) or (p is not None and p > m):
        continue
      structure = ssc_structure(m, n, k, g, p, taps)
      assert structure.num_weights == structure.mask.sum(), (g, p)
      assert structure.num_kernel_weights == structure.mask.sum() - structure.mix_pairs.sum()


def test_spec_worked_example():
  assert ssc_structure(512, 512, 3, 16, 2).num_weights == 270_336


def _reference_kept(m, n, k, g, p, taps):
  """Kept weights of one layer from SSC_SPEC.md's definitions (no ssc_jax code)."""
  c, o = np.arange(m)[:, None], np.arange(n)[None, :]
  same = (c * g // m == o * g // n) if g is not None else np.zeros((m, n), bool)
  positions = {'full': k * k, 'cross': 2 * k - 1, 'x': (k * k + 1) // 2}[taps] if k > 1 else 1
  mix = ((c - o) % p == 0) & ~same if p is not None else np.zeros((m, n), bool)
  return int(same.sum()) * positions + int(mix.sum())


def _reference_layers(network, model, num_classes):
  """(M, N, K, g, p, taps) of every conv and Dense layer, listed from the paper's networks."""
  taps = model.taps
  g_p = dict(zip({'vgg19': (64, 128, 256, 512), 'resnet32': (32, 64, 128),
                  'resnet50': (64, 128, 256, 512)}[network], zip(model.g or (1,) * 4,
                                                                  model.p or (None,) * 4)))
  if network == 'vgg19':
    channels = [3, 64, 64, 128, 128] + [256] * 4 + [512] * 8
    rows = [(3, 64, 3, 1, None, 'full')]
    rows += [(a, b, 3, *g_p[b], taps) for a, b in zip(channels[1:-1], channels[2:])]
    return rows + [(512, num_classes, 1, 1, None, 'full')]
  if network == 'resnet32':
    rows, width = [(3, 32, 3, 1, None, 'full')], 32
    for features in (32, 64, 128):
      for block in range(5):
        rows.append((width, features, 3, *g_p[features], taps))
        rows.append((features, features, 3, *g_p[features], taps))
        if width != features:
          rows.append((width, features, 1, 1, None, 'full'))
        width = features
    return rows + [(128, num_classes, 1, 1, None, 'full')]
  p_1x1 = dict(zip((64, 128, 256, 512, 1024, 2048), model.p_1x1 or (1,) * 6))
  rows, width = [(3, 64, 7, 1, None, 'full')], 64
  for features, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
    for block in range(blocks):
      rows += [(width, features, 1, None, p_1x1[features], 'full'),
               (features, features, 3, *g_p[features], taps),
               (features, 4 * features, 1, None, p_1x1[4 * features], 'full')]
      if block == 0:
        rows.append((width, 4 * features, 1, None, p_1x1[4 * features], 'full'))
      width = 4 * features
  return rows + [(2048, num_classes, 1, 1, None, 'full')]


# SSC_SPEC.md's table: kept % of every seed row under 9 and under 5 ('cross') taps.
SPEC_KEPT = {
    'cifar10_vgg19_10': (13.93, 10.01), 'cifar10_vgg19_5': (10.21, 6.04),
    'cifar10_vgg19_2': (3.69, 2.30), 'cifar100_vgg19_10': (16.38, 9.61),
    'cifar100_vgg19_5': (8.42, 5.01), 'cifar100_vgg19_2': (3.91, 2.52),
    'cifar10_resnet32_10': (15.40, 9.96), 'cifar10_resnet32_5': (7.26, 4.58),
    'cifar10_resnet32_2': (2.90, 1.98), 'cifar100_resnet32_10': (15.61, 10.34),
    'cifar100_resnet32_5': (8.49, 5.48), 'cifar100_resnet32_2': (3.43, 2.52),
    'cifar100_resnet32_ablation_1': (15.62, 9.95), 'cifar100_resnet32_ablation_2': (14.56, 9.84),
    'cifar100_resnet32_ablation_3': (15.21, 9.94), 'cifar100_resnet32_ablation_4': (16.48, 9.97),
    'cifar100_resnet32_ablation_5': (14.90, 9.95), 'cifar100_resnet32_ablation_6': (15.37, 9.61),
    'tinyimagenet_vgg19_90': (16.59, 9.84), 'tinyimagenet_vgg19_95': (8.19, 4.98),
    'tinyimagenet_vgg19_98': (3.96, 2.58), 'tinyimagenet_resnet32_85': (23.96, 14.63),
    'tinyimagenet_resnet32_90': (15.21, 9.98), 'tinyimagenet_resnet32_95': (7.87, 5.43),
    'imagenet_r50_40': (43.98, 39.68), 'imagenet_r50_20': (28.59, 23.77),
}


@pytest.mark.parametrize('name', sorted(SPEC_KEPT))
def test_seed_rows_match_an_independent_reference(name):
  """Each seed row (on 'cross', as configured) and its 'full' variant: the budget equals
  a count from the spec's definitions over a hand-listed network, and SSC_SPEC.md's table."""
  config = config_lib.load_config_module(ROOT / 'configs' / f'{name}.py').get_config()
  assert config.model.taps == 'cross'
  num_classes, _ = budget.dataset_facts(config.dataset)
  for taps, expected in zip(('full', 'cross'), SPEC_KEPT[name]):
    config.model.taps = taps
    layers = _reference_layers(config.model.name, config.model, num_classes)
    kept = sum(_reference_kept(*layer) for layer in layers)
    dense = sum(m * n * k * k for m, n, k, *_ in layers)
    result = budget.budget(config)
    assert (result.kept_params, result.dense_params) == (kept, dense)
    assert round(100 * kept / dense, 2) == expected


def test_issue_kept_fractions_to_four_decimals():
  """The figures the paper's tickets imply, under the configs' 'cross' pattern."""
  for name, expected in (('cifar10_resnet32_10', 0.0996), ('imagenet_r50_40', 0.3968),
                         ('cifar10_vgg19_10', 0.1001)):
    result = json.loads(_cli(f'--config=configs/{name}.py', '--json'))
    assert round(result['kept_fraction'], 4) == expected
    assert result['taps'] == 'cross'
    patterned = [l for l in result['layers'] if l['setting'] == 'g_p']
    assert patterned and all(l['taps'] == 'cross' for l in patterned)
    assert all(l['taps'] == 'full' for l in result['layers'] if l['setting'] is None)


def _config(dataset, network, **model):
  if dataset == 'imagenet2012':
    config = config_lib.imagenet()
  elif dataset == 'tiny_imagenet':
    config = config_lib.tiny_imagenet(network)
  else:
    config = config_lib.cifar(dataset, network)
  for key, value in model.items():
    config.model[key] = value
  return config


def test_dense_vgg19_table():
  result = budget.budget(_config('cifar10', 'vgg19'))
  assert [l.name for l in result.layers] == [f'conv{i}' for i in range(16)] + ['dense']
  channels = [3, 64, 64, 128, 128] + [256] * 4 + [512] * 8
  sizes = [32] * 2 + [16] * 2 + [8] * 4 + [4] * 4 + [2] * 4
  weights = [9 * m * n for m, n in zip(channels[:-1], channels[1:])] + [5120]
  macs = [w * s * s for w, s in zip(weights, sizes)] + [5120]
  assert [l.weights for l in result.layers] == weights
  assert [l.macs for l in result.layers] == macs
  assert result.kept_fraction == 1.0 and result.macs == result.dense_macs == sum(macs)


def test_dense_layers_stay_dense():
  result = budget.budget(_config('imagenet2012', 'resnet50', g=(2, 2, 2, 2), p=(2, 2, 2, 2),
                                 p_1x1=(2,) * 6))
  fixed = {l.name: l for l in result.layers if l.setting is None}
  assert set(fixed) == {'stem_conv', 'dense'}
  assert all(l.weights == l.dense_weights for l in fixed.values())
  assert fixed['stem_conv'].macs == 7 * 7 * 3 * 64 * 112 * 112
  pointwise = [l for l in result.layers if l.setting == 'p_1x1']
  assert len(pointwise) == 2 * 16 + 4 and all(l.g is None and l.p == 2 for l in pointwise)


def _cli(*args):
  out = subprocess.run([sys.executable, '-m', 'ssc_jax.budget', *args], cwd=ROOT,
                       capture_output=True, text=True, check=True)
  return out.stdout


def test_cli_json_with_override():
  result = json.loads(_cli('--config=configs/cifar10_vgg19_10.py', '--json',
                           '--config.model.g=(1,2,4,32)'))
  assert result['settings']['g'] == [1, 2, 4, 32]
  expected = budget.budget(_config('cifar10', 'vgg19', g=(1, 2, 4, 32), p=(1, 2, 2, 2), taps='cross'))
  for key in ('kept_params', 'dense_params', 'macs', 'dense_macs'):
    assert result[key] == getattr(expected, key)
  assert result['kept_fraction'] == pytest.approx(expected.kept_fraction)
  assert len(result['layers']) == 17


def test_cli_target_prints_pasteable_settings():
  out = _cli('--config=configs/imagenet_r50_40.py', '--target=0.40')
  lines = [l for l in out.splitlines() if l.startswith('config.model.')]
  assert [l.split(' = ')[0] for l in lines] == ['config.model.g', 'config.model.p',
                                                'config.model.p_1x1']
  config = _config('imagenet2012', 'resnet50', taps='cross')
  exec('\n'.join(lines), {'config': config})  # pylint: disable=exec-used
  assert abs(budget.budget(config).kept_fraction - 0.40) <= budget.TOLERANCE


SEED_TARGETS = [('cifar10', 'vgg19', t) for t in (0.10, 0.05, 0.02)] + \
    [('cifar100', 'vgg19', t) for t in (0.10, 0.05, 0.02)] + \
    [('cifar10', 'resnet32', t) for t in (0.10, 0.05, 0.02)] + \
    [('cifar100', 'resnet32', t) for t in (0.10, 0.05, 0.02)] + \
    [('tiny_imagenet', 'vgg19', t) for t in (0.10, 0.05, 0.02)] + \
    [('tiny_imagenet', 'resnet32', t) for t in (0.15, 0.10, 0.05)] + \
    [('imagenet2012', 'resnet50', t) for t in (0.40, 0.20)]


@pytest.mark.parametrize('dataset,network,target,taps', [
    row + ('cross',) for row in SEED_TARGETS] + [
        ('cifar10', 'resnet32', 0.10, 'full'), ('cifar10', 'vgg19', 0.05, 'full'),
        ('imagenet2012', 'resnet50', 0.40, 'full'), ('cifar100', 'resnet32', 0.10, 'alternate')])
def test_solver_hits_seed_targets(dataset, network, target, taps):
  config = _config(dataset, network, taps=taps)
  num_classes, _ = budget.dataset_facts(dataset)
  ticket = budget.solve_ticket(config.model, num_classes, target)
  assert abs(ticket.kept_fraction - target) <= budget.TOLERANCE
  for field, value in ticket.settings.items():
    config.model[field] = value
  result = budget.budget(config)  # the real model, traced
  assert result.kept_fraction == pytest.approx(ticket.kept_fraction, abs=1e-12)
  for field in ('g_p', 'p_1x1'):
    density = {}
    for layer in result.layers:
      if layer.setting == field:
        kept, dense = density.get(layer.features, (0, 0))
        density[layer.features] = (kept + layer.weights, dense + layer.dense_weights)
    ordered = [kept / dense for _, (kept, dense) in sorted(density.items())]
    assert all(a >= b for a, b in zip(ordered, ordered[1:])), (field, ordered)
  assert ticket.settings['g'][0] in (1, 2, 4, 8, 16, 32)  # first entry light or dense


def test_solver_is_deterministic_and_rejects_bad_targets():
  config = _config('cifar10', 'resnet32')
  first = budget.solve_ticket(config.model, 10, 0.07)
  assert budget.solve_ticket(config.model, 10, 0.07) == first
  with pytest.raises(ValueError, match='target'):
    budget.solve_ticket(config.model, 10, 0.0)
  with pytest.raises(ValueError, match=r'config\.model\.ticket=0\.001: no per-filter-count '
                     r'\(g, p\) of resnet32 keeps that fraction of its weights within 0\.0025; '
                     r'its settings keep 0\.0\d{3} to 1\.0000; the closest keeps 0\.0\d{3}$'):
    budget.solve_ticket(config.model, 10, 0.001)


def test_unknown_dataset():
  with pytest.raises(ValueError, match=r'config\.dataset'):
    budget.dataset_facts('mnist')
