"""ssc_jax.nnx: the NNX layer against the linen layer and a dense reference; the NNX networks
against the linen networks."""

import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax import lax

import ssc_jax
from ssc_jax import SSCConv, budget, config_lib, dense_kernel, models, ssc_mask, train
from ssc_jax import nnx as ssc_nnx
from ssc_jax.data import digits
from ssc_jax.ssc import autotune

HIGHEST = lax.Precision.HIGHEST
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
SEED_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob('*.py'))


def normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def linen_twin(layer: ssc_nnx.SSCConv) -> SSCConv:
  return SSCConv(layer.out_features, layer.kernel_size, strides=layer.strides,
                 padding=layer.padding, g=layer.g, p=layer.p, taps=layer.taps,
                 use_bias=layer.bias is not None, precision=layer.precision,
                 implementation=layer.implementation)


def randomized(layer: ssc_nnx.SSCConv, seed: int) -> dict:
  """Every parameter of `layer` set to standard normal entries (bias too); returns them."""
  params = {k: normal((seed, i), v.shape)
            for i, (k, v) in enumerate(sorted(nnx.to_pure_dict(nnx.state(layer, nnx.Param)).items()))}
  state = nnx.state(layer, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(layer, state)
  return params


# (M, N, K, g, p, taps, strides, padding)
CASES = [
    (8, 12, 3, 4, 3, 'full', 1, 'SAME'),
    (8, 12, 3, 4, 3, 'cross', 2, 'SAME'),
    (10, 14, 3, 3, 5, 'x', 1, 'VALID'),
    (16, 16, 3, 2, 2, 'alternate', 2, 1),
    (12, 9, 3, 3, None, '011/111/110', 1, ((2, 0), (1, 1))),
    (12, 16, 5, 4, 4, 'cross', (2, 1), 'SAME'),
    (16, 24, 1, None, 4, 'full', 2, 0),
    (6, 6, 3, 1, None, 'full', 1, 'SAME'),
]


@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(map(str, c[:6])))
def test_layer_equals_linen_and_dense_reference(case):
  m, n, k, g, p, taps, strides, padding = case
  layer = ssc_nnx.SSCConv(m, n, k, strides=strides, padding=padding, g=g, p=p, taps=taps,
                          precision=HIGHEST, rngs=nnx.Rngs(0))
  params = randomized(layer, 1)
  x = normal(2, (3, 9, 9, m))
  twin = linen_twin(layer)

  def nnx_loss(params, x):
    state = nnx.state(layer, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    return jnp.sum(jnp.sin(nnx.merge(nnx.graphdef(layer), state)(x)))

  def linen_loss(params, x):
    return jnp.sum(jnp.sin(twin.apply({'params': params}, x)))

  out_nnx, out_linen = jax.jit(layer)(x), jax.jit(twin.apply)({'params': params}, x)
  grads_nnx = jax.jit(jax.grad(nnx_loss, argnums=(0, 1)))(params, x)
  grads_linen = jax.jit(jax.grad(linen_loss, argnums=(0, 1)))(params, x)
  assert relative_error(out_nnx, out_linen) < 1e-6
  for a, b in zip(jax.tree.leaves(grads_nnx), jax.tree.leaves(grads_linen)):
    assert relative_error(a, b) < 1e-6

  mask = ssc_mask(m, n, k, g, p, taps)
  dense = np.asarray(dense_kernel(layer.structure, params))
  assert not np.any(dense[~mask]) and np.all(dense[mask] != 0)
  pads = padding if not isinstance(padding, int) else ((padding,) * 2,) * 2
  strides = (strides,) * 2 if isinstance(strides, int) else strides
  reference = lax.conv_general_dilated(x, jnp.asarray(dense), strides, pads,
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                       precision=HIGHEST) + params['bias']
  assert relative_error(out_nnx, reference) < 1e-5


@pytest.mark.parametrize('implementation', ['dense', 'split', 'taps+matmul',
                                            ('shifts', 'grouped', 'sliced')])
def test_layer_runs_every_lowering_like_linen(implementation):
  layer = ssc_nnx.SSCConv(8, 12, 3, g=4, p=3, taps='cross', precision=HIGHEST,
                          implementation=implementation, rngs=nnx.Rngs(0))
  params = randomized(layer, 3)
  x = normal(4, (2, 7, 7, 8))
  assert relative_error(layer(x), linen_twin(layer).apply({'params': params}, x)) < 1e-6


def test_layer_parameters_and_errors():
  layer = ssc_nnx.SSCConv(512, 512, 3, g=16, p=2, taps='cross', use_bias=False,
                          rngs=nnx.Rngs(0))
  shapes = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(layer, nnx.Param)))
  linen = jax.eval_shape(SSCConv(512, 3, g=16, p=2, taps='cross', use_bias=False).init,
                         jax.random.key(0), jnp.zeros((1, 4, 4, 512)))
  assert shapes == jax.tree.map(jnp.shape, dict(linen['params']))
  assert sum(np.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))
             ) == 204_800
  with pytest.raises(ValueError, match=r'nnx.SSCConv: g=9 is out of range'):
    ssc_nnx.SSCConv(8, 8, 3, g=9, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"implementation='taps2'"):
    ssc_nnx.SSCConv(8, 8, 3, g=2, implementation='taps2', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'has 6 channels; the layer was built for in_features=8'):
    ssc_nnx.SSCConv(8, 8, 3, g=2, rngs=nnx.Rngs(0))(jnp.ones((1, 5, 5, 6)))


def test_jit_grad_and_optimizer_keep_the_pattern():
  layer = ssc_nnx.SSCConv(8, 12, 3, g=4, p=3, taps='cross', rngs=nnx.Rngs(0))
  mask = ssc_mask(8, 12, 3, 4, 3, 'cross')
  optimizer = nnx.Optimizer(layer, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  x, target = normal(5, (4, 6, 6, 8)), normal(6, (4, 6, 6, 12))
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(layer, nnx.Param)))

  @nnx.jit
  def step(layer, optimizer, x, target):
    loss, grads = nnx.value_and_grad(lambda l: jnp.mean((l(x) - target) ** 2))(layer)
    optimizer.update(layer, grads)
    return loss

  losses = [float(step(layer, optimizer, x, target)) for _ in range(5)]
  after = nnx.to_pure_dict(nnx.state(layer, nnx.Param))
  assert losses[-1] < losses[0]
  for name in before:
    assert after[name].shape == before[name].shape
    assert np.all(np.asarray(after[name]) != before[name])  # every kept weight trained
  dense = np.asarray(dense_kernel(layer.structure, after))
  assert not np.any(dense[~mask]) and np.all(dense[mask] != 0)


def test_split_merge_and_orbax_round_trip(tmp_path):
  layer = ssc_nnx.SSCConv(6, 10, 3, g=2, p=2, taps='x', rngs=nnx.Rngs(0))
  randomized(layer, 7)
  x = normal(8, (2, 5, 5, 6))
  graphdef, state = nnx.split(layer)
  np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), layer(x))

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'layer', state)
  checkpointer.wait_until_finished()
  fresh = ssc_nnx.SSCConv(6, 10, 3, g=2, p=2, taps='x', rngs=nnx.Rngs(1))
  assert relative_error(fresh(x), layer(x)) > 0.1
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: fresh))
  restored = checkpointer.restore(tmp_path / 'layer', abstract)
  np.testing.assert_array_equal(nnx.merge(graphdef, restored)(x), layer(x))


class DigitsCNN(nnx.Module):
  """A small CNN of SSC layers for 8x8 digits."""

  def __init__(self, rngs):
    he = ssc_jax.he_normal()
    self.conv1 = ssc_nnx.SSCConv(1, 16, 3, g=1, kernel_init=he, rngs=rngs)
    self.conv2 = ssc_nnx.SSCConv(16, 32, 3, strides=2, g=4, p=2, taps='cross', kernel_init=he,
                                 rngs=rngs)
    self.conv3 = ssc_nnx.SSCConv(32, 32, 3, g=8, p=4, taps='cross', kernel_init=he, rngs=rngs)
    self.norm = nnx.BatchNorm(32, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
    x = nnx.relu(self.norm(self.conv3(x)))
    return self.head(jnp.mean(x, axis=(1, 2)))


def test_nnx_cnn_learns_digits():
  images, labels = digits.load_split('train')
  images = jnp.asarray(images[:512], jnp.float32)
  images = (images - images.mean()) / images.std()
  labels = jnp.asarray(labels[:512])
  model = DigitsCNN(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.5, momentum=0.9), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, images[i % 8 * 64:][:64], labels[i % 8 * 64:][:64]))
            for i in range(48)]
  assert np.mean(losses[-8:]) < 0.3 * np.mean(losses[:8]), losses


def _config(name):
  config = config_lib.load_config_module(CONFIG_DIR / f'{name}.py').get_config()
  num_classes, shape = budget.dataset_facts(config.dataset)
  model_config = budget.resolve_ticket(config.model, num_classes, shape[-1])
  return model_config, num_classes, shape


def _linen_shapes(model_config, num_classes, shape):
  model = models.create_model(model_config, num_classes)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + shape),
                                                train=False))
  return {**jax.tree.map(jnp.shape, dict(variables['params'])),
          **{'batch_stats': jax.tree.map(jnp.shape, dict(variables['batch_stats']))}}


@pytest.mark.parametrize('name', SEED_CONFIGS)
def test_networks_have_the_linen_parameters(name):
  model_config, num_classes, shape = _config(name)
  model = nnx.eval_shape(lambda: ssc_nnx.create_model(model_config, num_classes,
                                                      in_features=shape[-1],
                                                      rngs=nnx.Rngs(0)))
  params = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  stats = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  linen = _linen_shapes(model_config, num_classes, shape)
  assert {**params, 'batch_stats': stats} == linen
  count = lambda tree: sum(int(np.prod(s)) for s in jax.tree.leaves(
      tree, is_leaf=lambda s: isinstance(s, tuple)))
  assert count(params) == budget.trace(models.create_model(model_config, num_classes),
                                       shape).num_params


@pytest.mark.parametrize('name,size', [
    ('default', 8), ('cifar10_resnet32_10', 16), ('imagenet_r50_40', 64),
    pytest.param('cifar10_vgg19_10', 32, marks=pytest.mark.slow)])  # 'default' is a VGG
def test_networks_compute_what_linen_computes(name, size):
  model_config, num_classes, shape = _config(name)
  model_config.dtype = 'float32'  # ImageNet's configs compute in bfloat16
  shape = (size, size, shape[-1])
  linen = models.create_model(model_config, num_classes)
  x = normal(9, (4,) + shape)
  init = jax.jit(lambda: linen.init(jax.random.key(0), x[:1], train=False))
  variables = init.lower().compile(train.init_compiler_options())()
  flat = flax.traverse_util.flatten_dict(variables)
  for i, (path, value) in enumerate(sorted(flat.items())):  # BatchNorm away from its init
    noise = 0.2 * normal((10, i), value.shape)
    if path[0] == 'batch_stats':
      flat[path] = noise if path[-1] == 'mean' else 1 + jnp.abs(noise)
    elif path[-2].startswith(('bn', 'proj_bn', 'stem_bn')):
      flat[path] = noise + (1.0 if path[-1] == 'scale' else 0.0)
  variables = flax.traverse_util.unflatten_dict(flat)
  model = nnx.eval_shape(lambda: ssc_nnx.create_model(model_config, num_classes,
                                                      in_features=shape[-1], rngs=nnx.Rngs(0)))
  ssc_nnx.load_linen(model, variables)  # every abstract variable replaced

  with autotune.installed(autotune.Plan(force='dense')):  # the wiring, compiled quickly
    model.eval()
    expected = jax.jit(lambda v, x: linen.apply(v, x, train=False))(variables, x)
    assert relative_error(nnx.jit(lambda m, x: m(x))(model, x), expected) < 1e-5
    model.train()
    expected, updates = jax.jit(lambda v, x: linen.apply(
        v, x, train=True, mutable=['batch_stats']))(variables, x)
    assert relative_error(nnx.jit(lambda m, x: m(x))(model, x), expected) < 1e-5
  stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(dict(updates['batch_stats']))):
    assert relative_error(a, b) < 1e-5


def test_load_linen_names_the_first_difference():
  model_config, num_classes, shape = _config('default')
  other, _, _ = _config('cifar10_resnet32_10')
  linen = models.create_model(other, 10)
  variables = jax.eval_shape(lambda: linen.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                                                train=False))
  model = ssc_nnx.create_model(model_config, num_classes, in_features=1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'load_linen: variable bn0/bias is missing in the linen '
                                       r'variables and shape \(16,\) in the NNX network'):
    ssc_nnx.load_linen(model, variables)
