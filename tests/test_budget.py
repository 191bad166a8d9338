"""The budget tool: exact counts, traced tables, the command line and the ticket solver."""

import json
import pathlib
import subprocess
import sys

import pytest

from ssc_jax import budget
from ssc_jax import config_lib
from ssc_jax import layers

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('m,n,k', [(64, 128, 3), (128, 128, 3), (100, 37, 3), (512, 512, 1), (3, 16, 3)])
def test_kept_weights_equals_structure(m, n, k):
  for g in (None, 1, 2, 3, 5, 7, 15, 16):
    for p in (None, 1, 2, 3, 4, 13, 25):
      if (g is None and p is None) or (g is not None and g > min(m, n)) or (p is not None and p > m):
        continue
      assert budget.kept_weights(m, n, k * k, g, p) == layers.ssc_structure(m, n, k, g, p).num_weights


def test_spec_worked_example():
  assert budget.kept_weights(512, 512, 9, 16, 2) == 270_336


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
  expected = budget.budget(_config('cifar10', 'vgg19', g=(1, 2, 4, 32), p=(1, 2, 2, 2)))
  for key in ('kept_params', 'dense_params', 'macs', 'dense_macs'):
    assert result[key] == getattr(expected, key)
  assert result['kept_fraction'] == pytest.approx(expected.kept_fraction)
  assert len(result['layers']) == 17


def test_cli_target_prints_pasteable_settings():
  out = _cli('--config=configs/imagenet_r50_40.py', '--target=0.40')
  lines = [l for l in out.splitlines() if l.startswith('config.model.')]
  assert [l.split(' = ')[0] for l in lines] == ['config.model.g', 'config.model.p',
                                                'config.model.p_1x1']
  config = _config('imagenet2012', 'resnet50')
  exec('\n'.join(lines), {'config': config})  # pylint: disable=exec-used
  assert abs(budget.budget(config).kept_fraction - 0.40) <= budget.TOLERANCE


SEED_TARGETS = [('cifar10', 'vgg19', t) for t in (0.10, 0.05, 0.02)] + \
    [('cifar100', 'vgg19', t) for t in (0.10, 0.05, 0.02)] + \
    [('cifar10', 'resnet32', t) for t in (0.10, 0.05, 0.02)] + \
    [('cifar100', 'resnet32', t) for t in (0.10, 0.05, 0.02)] + \
    [('tiny_imagenet', 'vgg19', t) for t in (0.10, 0.05, 0.02)] + \
    [('tiny_imagenet', 'resnet32', t) for t in (0.15, 0.10, 0.05)] + \
    [('imagenet2012', 'resnet50', t) for t in (0.40, 0.20)]


@pytest.mark.parametrize('dataset,network,target', SEED_TARGETS)
def test_solver_hits_seed_targets(dataset, network, target):
  config = _config(dataset, network)
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
  with pytest.raises(ValueError, match=r'config\.model\.ticket=0\.001'):
    budget.solve_ticket(config.model, 10, 0.001)


def test_unknown_dataset():
  with pytest.raises(ValueError, match=r'config\.dataset'):
    budget.dataset_facts('mnist')
