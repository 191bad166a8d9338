"""The paper networks: dense parameter counts, settings, forward passes, errors."""

import functools
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssc_jax
from ssc_jax import budget
from ssc_jax import config_lib
from ssc_jax import models
from ssc_jax.models import resnet_imagenet


def _model_config(network, **model):
  config = (config_lib.imagenet() if network == 'resnet50'
            else config_lib.cifar('cifar10', network)).model
  for key, value in model.items():
    config[key] = value
  return config


def _params(model, shape):
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + shape), train=False))
  return variables['params']


def _count(tree):
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _weights(tree):
  """Sizes of the conv and Dense weights ('kernel' and 'mix' leaves)."""
  flat = flax.traverse_util.flatten_dict(tree)
  return sum(leaf.size for path, leaf in flat.items() if path[-1] in ('kernel', 'mix'))


def test_dense_vgg19_parameter_count():
  blocks = [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)]
  total, in_features = 0, 3
  for features, convs in blocks:
    for _ in range(convs):
      total += 9 * in_features * features + 2 * features  # kernel, BN scale + bias
      in_features = features
  total += 512 * 10 + 10
  model = models.create_model(_model_config('vgg19'), 10)
  assert _count(_params(model, (32, 32, 3))) == total == 20_035_018


@pytest.mark.parametrize('width', [1, 2])
def test_dense_resnet32_parameter_count(width):
  stages = [16 * width, 32 * width, 64 * width]
  total = 9 * 3 * stages[0] + 2 * stages[0]
  in_features = stages[0]
  for features in stages:
    for _ in range(5):
      total += 9 * in_features * features + 9 * features * features + 4 * features
      if in_features != features:
        total += in_features * features + 2 * features
      in_features = features
  total += stages[-1] * 100 + 100
  model = models.create_model(_model_config('resnet32', width=width), 100)
  assert _count(_params(model, (32, 32, 3))) == total


def test_dense_resnet50_parameter_count():
  model = models.create_model(_model_config('resnet50'), 1000)
  assert _count(_params(model, (64, 64, 3))) == 25_557_032


@pytest.mark.parametrize('network,settings,shape', [
    ('vgg19', dict(g=(1, 2, 4, 16), p=(1, 2, 2, 2)), (32, 32, 3)),
    ('vgg19', dict(g=(1, 3, 7, 19), p=(None, 5, 15, 25)), (32, 32, 3)),
    ('resnet32', dict(g=(2, 4, 15), p=(2, 4, 4)), (32, 32, 3)),
    ('resnet32', dict(g=(None, 6, 19), p=(3, None, 4)), (32, 32, 3)),
    ('resnet50', dict(g=(1, 1, 4, 6), p=(1, 2, 4, 8), p_1x1=(1, 1, 4, 4, 8, 8)), (64, 64, 3)),
])
def test_parameter_count_matches_budget(network, settings, shape):
  config = _model_config(network, **settings)
  model = models.create_model(config, 10)
  params = _params(model, shape)
  result = budget.trace(model, shape)
  assert _weights(params) == result.kept_params
  assert _count(params) == result.num_params
  assert result.kept_params < result.dense_params


def test_filter_counts_and_default_settings():
  assert models.filter_counts(_model_config('vgg19')) == {'g_p': (64, 128, 256, 512)}
  assert models.filter_counts(_model_config('resnet32', width=2)) == {'g_p': (32, 64, 128)}
  assert models.filter_counts(_model_config('resnet50')) == {
      'g_p': (64, 128, 256, 512), 'p_1x1': (64, 128, 256, 512, 1024, 2048)}
  assert models.resolve_settings(_model_config('resnet50')) == {
      'g': (1, 1, 1, 1), 'p': (None,) * 4, 'p_1x1': (1,) * 6}


def test_ticket_is_solved_before_the_model_is_built():
  config = _model_config('resnet32', width=2, ticket=0.1, taps='cross')
  resolved = budget.resolve_ticket(config, 10)
  solved = budget.solve_ticket(config, 10, 0.1).settings
  assert resolved.ticket is None and models.resolve_settings(resolved) == solved
  result = budget.trace(models.create_model(resolved, 10), (32, 32, 3))
  assert abs(result.kept_fraction - 0.1) <= budget.TOLERANCE
  with pytest.raises(ValueError, match=r'config\.model\.ticket=0\.1 is set.*resolve_ticket'):
    models.create_model(config, 10)


@pytest.mark.parametrize('network,shape', [('vgg19', (32, 32, 3)), ('resnet32', (32, 32, 3)),
                                           ('resnet50', (64, 64, 3))])
def test_pattern_applies_to_the_kxk_ssc_layers_only(network, shape):
  """model.taps patterns every 3x3 layer that takes (g, p), g = 1 included, and nothing else."""
  config = _model_config(network, taps='cross', width=2)
  result = budget.trace(models.create_model(config, 10), shape)
  for layer in result.layers:
    patterned = layer.setting == 'g_p'
    assert layer.taps == ('cross' if patterned else 'full'), layer.name
    if patterned:
      assert layer.g == 1 and layer.weights == 5 * layer.in_features * layer.features
  assert any(l.setting == 'g_p' for l in result.layers)


def test_grasp_initialisation():
  """model.init='grasp': conv weights with Var = 2 / real fan-out, Dense N(0, 0.01^2), zero bias."""
  config = _model_config('vgg19', g=(1, 2, 4, 8), p=(1, 2, 2, 2), taps='cross', init='grasp')
  model = models.create_model(config, 10)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      jnp.zeros((1, 32, 32, 3)))
  dense = variables['params']['dense']
  assert not np.asarray(dense['bias']).any()
  assert abs(float(np.std(dense['kernel'])) - 0.01) < 0.001
  conv0 = np.asarray(variables['params']['conv0']['kernel'])  # dense 3x3, 3 -> 64
  assert abs(conv0.var() - 2 / (9 * 64)) < 0.15 * 2 / (9 * 64)
  structure = ssc_jax.ssc_structure(256, 512, 3, 8, 2, 'cross')
  kernel = np.asarray(ssc_jax.dense_kernel(structure, variables['params']['conv8']))
  per_input = (kernel ** 2).sum(axis=(0, 1, 3))  # E = fan_out * 2 / fan_out = 2
  assert abs(per_input.mean() - 2.0) < 0.1
  he_model = models.create_model(_model_config('vgg19', init='he'), 10)
  he = jax.jit(lambda x: he_model.init(jax.random.key(0), x, train=False))(
      jnp.zeros((1, 32, 32, 3)))
  assert abs(float(np.std(he['params']['dense']['kernel'])) - (1 / 512) ** 0.5) < 0.005


def test_zero_init_residual_is_an_option():
  """model.zero_init_residual reaches ResNet-50's blocks: each block's last BatchNorm scale."""
  for zero in (True, False):
    model = models.create_model(_model_config('resnet50', zero_init_residual=zero), 10)
    assert model.zero_init_residual == zero
    block = resnet_imagenet.Bottleneck(16, 1, 1, None, 1, 1, 'cross', 'grasp', zero, jnp.float32)
    params = block.init(jax.random.key(0), jnp.ones((1, 4, 4, 64)), train=False)['params']
    scale = np.asarray(params['bn3']['scale'])
    assert (not scale.any()) if zero else (scale == 1).all()
  assert not config_lib.imagenet().model.zero_init_residual  # off for the paper rows


def test_bad_pattern_and_init_name_the_key():
  with pytest.raises(ValueError, match=r'config\.model\.taps'):
    models.create_model(_model_config('vgg19', taps='plus'), 10)
  with pytest.raises(ValueError, match=r"config\.model\.init='xavier' must be one of"):
    models.create_model(_model_config('vgg19', init='xavier'), 10)


@pytest.mark.parametrize('network,dtype,shape', [
    ('vgg19', 'float32', (32, 32, 3)),
    ('resnet32', 'bfloat16', (32, 32, 3)),
    pytest.param('resnet50', 'bfloat16', (32, 32, 3), marks=pytest.mark.slow),
    ('digits_ssc', 'float32', (8, 8, 1)),
])
def test_forward_train_and_eval(network, dtype, shape):
  settings = dict(g=(1, 2, 4, 16), p=(1, 2, 2, 2)) if network == 'vgg19' else {}
  if network == 'digits_ssc':
    settings = dict(g=(1, 2, 4), p=(1, 2, 2))
  model = models.create_model(_model_config(network, dtype=dtype, **settings), 7)
  x = jax.random.normal(jax.random.key(1), (2,) + shape)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  logits, updates = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
      variables, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                         updates['batch_stats'])
  assert all(jax.tree.leaves(changed))
  eval_logits = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert eval_logits.shape == (2, 7) and eval_logits.dtype == jnp.float32
  leaves = jax.tree.leaves(variables['params'])
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)


@pytest.mark.parametrize('field,value', [('g', (1, 2, 4)), ('p', (1, 2, 2, 2, 2))])
def test_wrong_length_names_field(field, value):
  config = _model_config('vgg19', **{field: value})
  with pytest.raises(ValueError, match=rf'config\.model\.{field}=.*one per filter count \(64, 128, 256, 512\)'):
    models.create_model(config, 10)


def test_wrong_length_p_1x1():
  config = _model_config('resnet50', p_1x1=(1, 2, 2, 2))
  with pytest.raises(ValueError, match=r'config\.model\.p_1x1=.*1024, 2048'):
    models.create_model(config, 10)


def test_out_of_range_g_names_field_and_layer():
  model = models.create_model(_model_config('vgg19', g=(1, 100, 1, 1)), 10)
  with pytest.raises(ValueError, match=r"config\.model\.g entry for 128 filters.*'conv2' \(M=64 input, N=128"):
    _params(model, (32, 32, 3))


def test_out_of_range_p_names_field_and_layer():
  model = models.create_model(_model_config('resnet32', g=(1, 1, 1), p=(1, 65, 1), width=2), 10)
  with pytest.raises(ValueError, match=r"config\.model\.p entry for 64 filters.*'stage2_block0/conv1' \(M=32 input, N=64"):
    _params(model, (32, 32, 3))


def test_out_of_range_p_1x1_names_field_and_layer():
  model = models.create_model(_model_config('resnet50', p_1x1=(1, 1, 1, 600, 1, 1)), 10)
  with pytest.raises(ValueError, match=r"config\.model\.p_1x1 entry for 512 filters.*stage2_block0/conv3' \(M=128 input"):
    _params(model, (64, 64, 3))


def test_bad_entries_rejected():
  with pytest.raises(ValueError, match=r'config\.model\.g=.*positive int'):
    models.create_model(_model_config('vgg19', g=(1, 0, 1, 1)), 10)
  with pytest.raises(ValueError, match=r'config\.model\.dtype'):
    models.create_model(_model_config('vgg19', dtype='float16'), 10)
  with pytest.raises(ValueError, match=r'config\.model\.name'):
    models.create_model(_model_config('vgg19', name='vgg16'), 10)
