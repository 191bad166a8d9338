"""Every config in configs/: loads, builds its model, runs forward; documented fractions."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssc_jax import budget
from ssc_jax import config_lib
from ssc_jax import models

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
PAPER_ROWS = sorted(p.stem for p in CONFIG_DIR.glob('*.py') if p.stem != 'default')


def load(name):
  return config_lib.load_config_module(CONFIG_DIR / f'{name}.py')


def _model(config):
  num_classes, shape = budget.dataset_facts(config.dataset)
  return models.create_model(config.model, num_classes), num_classes, shape


def test_every_row_has_a_config():
  expected = {f'{d}_{n}_{t}' for d in ('cifar10', 'cifar100') for n in ('vgg19', 'resnet32')
              for t in (10, 5, 2)}
  expected |= {f'tinyimagenet_vgg19_{t}' for t in (90, 95, 98)}
  expected |= {f'tinyimagenet_resnet32_{t}' for t in (85, 90, 95)}
  expected |= {'imagenet_r50_40', 'imagenet_r50_20'}
  expected |= {f'cifar100_resnet32_ablation_{i}' for i in range(1, 7)}
  expected |= {f'{d}_{n}_dense' for d in ('cifar10', 'cifar100', 'tinyimagenet')
               for n in ('vgg19', 'resnet32')} | {'imagenet_r50_dense'}
  assert expected <= set(PAPER_ROWS)


def test_paper_rows_train_as_the_paper_did():
  """Whole training set and decay on every parameter for each paper row and its dense
  baseline; the embedded default keeps base()'s validation split and kernel-only decay."""
  for name in PAPER_ROWS:
    config = load(name).get_config()
    assert (config.full_train, config.weight_decay_on) == (True, 'all'), name
    config_lib.check_config(config)
  default = load('default').get_config()
  assert (default.full_train, default.weight_decay_on) == (False, 'kernels')


@pytest.mark.parametrize('name', PAPER_ROWS)
def test_config_builds_and_traces(name):
  """Abstract init and training forward at the dataset's input size."""
  config = load(name).get_config()
  model, num_classes, shape = _model(config)

  def forward():
    x = jnp.zeros((2,) + shape)
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, train=True, mutable=['batch_stats'])

  logits, _ = jax.eval_shape(forward)
  assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32


@pytest.mark.parametrize('name', PAPER_ROWS)
def test_docstring_matches_budget(name):
  module = load(name)
  documented = float(re.search(r'Kept: ([\d.]+)%', module.__doc__).group(1))
  assert f'--config=configs/{name}.py --workdir=/tmp/{name}' in module.__doc__
  result = budget.budget(module.get_config())
  assert round(100 * result.kept_fraction, 2) == documented
  if not name.endswith('_dense'):
    macs = float(re.search(r'and ([\d.]+)% of the MACs', module.__doc__).group(1))
    assert round(100 * result.macs / result.dense_macs, 2) == macs


def test_spec_kept_fractions():
  """The paper rows on their 'cross' kernels, and as 9-tap networks."""
  for name, cross, full in (('cifar10_vgg19_10', 0.1001, 0.1393), ('imagenet_r50_40', 0.3968, 0.4398)):
    config = load(name).get_config()
    assert round(budget.budget(config).kept_fraction, 4) == cross
    config.model.taps = 'full'
    assert round(budget.budget(config).kept_fraction, 4) == full


@pytest.mark.parametrize('name', PAPER_ROWS)
def test_paper_rows_use_the_cross_pattern(name):
  """Every SSC paper row keeps 5 of 9 taps; the dense baselines keep all 9."""
  config = load(name).get_config()
  assert config.model.taps == ('full' if name.endswith('_dense') else 'cross')
  assert config.model.init == 'grasp'
  assert 'Recipe: ' in load(name).__doc__


def _forward_params():
  fast = {'cifar10_vgg19_10', 'cifar100_resnet32_10'}
  return [pytest.param(n, marks=() if n in fast else pytest.mark.slow)
          for n in PAPER_ROWS]


@pytest.mark.parametrize('name', _forward_params())
def test_config_forward(name):
  """A real forward pass on two images (ImageNet at 64x64 to save time)."""
  config = load(name).get_config()
  model, num_classes, shape = _model(config)
  shape = (64, 64, 3) if config.dataset == 'imagenet2012' else shape
  x = jax.random.normal(jax.random.key(0), (2,) + shape)

  @jax.jit
  def forward(x):
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, train=True, mutable=['batch_stats'])[0]

  logits = forward(x)
  assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
