"""SSCConv against independent references: the spec's pattern, dense convs, flax."""

import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import ssc_jax
from ssc_jax import SSCConv, conv_output_size, dense_kernel, ssc_mask, ssc_structure
from ssc_jax.ssc import layout as layout_lib

HIGHEST = lax.Precision.HIGHEST


def spec_taps(k, taps, o):
  """Kernel positions of output o under a pattern, from SSC_SPEC.md's definitions."""
  if taps == 'alternate':
    return spec_taps(k, 'cross' if o % 2 == 0 else 'x', o)
  if not isinstance(taps, str) or '/' in taps:
    rows = taps.split('/') if isinstance(taps, str) else taps
    return np.array([[int(v) for v in row] for row in rows], bool)
  grid = np.zeros((k, k), bool)
  for i in range(k):
    for j in range(k):
      di, dj = i - k // 2, j - k // 2
      grid[i, j] = {'full': True, 'cross': di == 0 or dj == 0, 'x': (di + dj) % 2 == 0}[taps]
  return grid


def spec_mask(m, n, k, g, p, taps='full'):
  """The spec's pattern, written out pair by pair (independent of ssc_jax.ssc)."""
  mask = np.zeros((k, k, m, n), bool)
  for c in range(m):
    for o in range(n):
      same = g is not None and (c * g) // m == (o * g) // n
      if same:
        mask[:, :, c, o] = spec_taps(k, taps, o)
      elif p is not None and (c - o) % p == 0:
        mask[k // 2, k // 2, c, o] = True
  return mask


def normal(seed, shape, dtype=jnp.float32):
  """Standard normal entries from numpy: no random-number program to compile per shape."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def perturbed_variables(module, x, seed=0):
  """Variables of the module's shapes with every entry standard normal (bias too): no entry
  sits at an initial value such as zero."""
  shapes = jax.eval_shape(module.init, jax.random.key(seed), x)
  leaves, treedef = jax.tree.flatten(shapes)
  return jax.tree.unflatten(treedef, [normal((seed, i), a.shape, a.dtype)
                                      for i, a in enumerate(leaves)])


def reference_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=HIGHEST)


def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


# (M, N, K, g, p): equal and unequal M/N from 3 to 160, g and p divisible and not.
SWEEP = [
    (3, 3, 3, 1, None), (3, 8, 3, 3, 2), (8, 3, 1, None, 3), (5, 7, 3, 2, 3),
    (16, 16, 3, 4, 2), (16, 16, 3, 16, None), (16, 24, 5, 8, 4), (24, 16, 3, 5, 3),
    (32, 32, 1, None, 4), (32, 48, 1, None, 5), (33, 65, 3, 7, 6), (64, 64, 3, 16, 2),
    (64, 128, 3, 15, 15), (96, 64, 5, 6, 7), (128, 128, 3, 19, 4), (128, 128, 3, 15, 15),
    (160, 160, 3, 32, 25), (160, 96, 3, 9, None), (100, 160, 1, None, 1), (160, 3, 3, 3, 160),
    (12, 12, 5, 12, 1), (40, 40, 3, 8, 1), (17, 17, 3, None, 1), (64, 64, 3, None, 7),
]


@pytest.mark.parametrize('m,n,k,g,p', SWEEP)
@pytest.mark.parametrize('strides,padding', [(1, 'SAME'), (2, 'VALID')])
@pytest.mark.parametrize('implementation', ['grouped', 'taps', 'dense'])
def test_matches_dense_convolution(m, n, k, g, p, strides, padding, implementation):
  """Output equals lax.conv with the dense kernel; the kernel's support is the spec's."""
  module = SSCConv(n, k, strides, padding, g=g, p=p, precision=HIGHEST,
                   implementation=implementation)
  x = normal(m * 1000 + n, (2, 11, 10, m))
  variables = perturbed_variables(module, x)
  structure = module.structure(m)
  kernel = dense_kernel(structure, variables)
  np.testing.assert_array_equal(np.asarray(kernel) != 0, spec_mask(m, n, k, g, p))
  pads = lax.padtype_to_pads((11, 10), (k, k), (strides, strides), padding)
  expected = reference_conv(x, kernel, (strides, strides), pads) + variables['params']['bias']
  out = jax.jit(module.apply)(variables, x)
  assert out.shape == expected.shape
  assert relative_error(out, expected) < 1e-5


@pytest.mark.parametrize('strides,padding', [
    (1, 'SAME'), (2, 'SAME'), (1, 'VALID'), (2, ((2, 0), (1, 3))), (3, 1), (1, ((0, 0), (3, 2)))])
@pytest.mark.parametrize('k', [1, 3, 5])
@pytest.mark.parametrize('implementation', ['grouped', 'taps', 'dense'])
def test_all_paddings_and_strides(k, strides, padding, implementation):
  """Both parts line up with the dense convolution for every padding and stride."""
  m, n, g, p = 10, 6, 2, 3
  module = SSCConv(n, k, strides, padding, g=g, p=p, precision=HIGHEST,
                   implementation=implementation)
  x = normal(k, (1, 13, 9, m))
  variables = perturbed_variables(module, x, seed=k)
  kernel = dense_kernel(module.structure(m), variables)
  pads = padding
  if isinstance(padding, str):
    pads = lax.padtype_to_pads((13, 9), (k, k), (strides, strides), padding)
  elif isinstance(padding, int):
    pads = ((padding, padding),) * 2
  expected = reference_conv(x, kernel, (strides, strides), pads) + variables['params']['bias']
  assert relative_error(jax.jit(module.apply)(variables, x), expected) < 1e-5


@pytest.mark.parametrize('m,n,k,g,p', [(6, 9, 3, 2, 4), (8, 8, 3, None, 3), (7, 5, 1, None, 2),
                                       (9, 12, 5, 4, 1), (16, 16, 3, 16, None)])
def test_dense_kernel_is_the_layer_jacobian(m, n, k, g, p):
  """dense_kernel equals the layer's own Jacobian on a KxK input (no bias)."""
  module = SSCConv(n, k, padding='VALID', g=g, p=p, use_bias=False, precision=HIGHEST)
  x = normal(3, (1, k, k, m))
  variables = perturbed_variables(module, x)
  jacobian = jax.jacobian(lambda v: module.apply(variables, v)[0, 0])(x[0])  # (N, K, K, M)
  np.testing.assert_allclose(np.moveaxis(np.asarray(jacobian), 0, -1),
                             dense_kernel(module.structure(m), variables), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('m,n,k,g,p', SWEEP[::3] + [(512, 512, 3, 16, 2), (256, 512, 1, None, 4)])
def test_parameter_count_is_mask_nonzeros(m, n, k, g, p):
  module = SSCConv(n, k, g=g, p=p, use_bias=False)
  x = jnp.zeros((1, 4, 4, m))  # shapes only: the count does not look at values
  params = jax.eval_shape(module.init, jax.random.key(0), x)['params']
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  structure = ssc_structure(m, n, k, g, p)
  assert count == structure.num_weights
  if m <= 160:
    assert count == spec_mask(m, n, k, g, p).sum()
  else:
    assert count == ssc_mask(m, n, k, g, p).sum()
  assert structure.num_params(use_bias=True) == count + n


def test_worked_example_of_the_spec():
  structure = ssc_structure(512, 512, 3, 16, 2)
  assert structure.num_weights == 270_336
  assert structure.num_dense_weights == 2_359_296
  assert round(100 * structure.num_weights / structure.num_dense_weights, 2) == 11.46


def test_parameters_are_compact():
  """Divisible g uses nn.Conv's grouped layout; nothing outside the pattern is stored."""
  x = jnp.zeros((1, 4, 4, 64))
  grouped = jax.eval_shape(SSCConv(128, 3, g=4, p=2).init, jax.random.key(0), x)['params']
  assert grouped['kernel'].shape == (3, 3, 16, 128)
  assert grouped['mix'].shape == (ssc_structure(64, 128, 3, 4, 2).num_mix_weights,)
  pointwise = jax.eval_shape(SSCConv(128, 1, g=None, p=4).init, jax.random.key(0), x)['params']
  assert pointwise['mix'].shape == (4, 16, 32)
  assert set(SSCConv(64, 3, g=1, p=2).init(jax.random.key(0), x)['params']) == {'kernel', 'bias'}


@pytest.mark.parametrize('m,n,k,g,p,input_size,strides,padding', [
    (64, 64, 3, 4, 2, (32, 32), 1, 'SAME'), (33, 17, 5, 3, 4, (15, 20), 2, 'VALID'),
    (16, 32, 1, None, 4, (7, 7), 2, 'SAME')])
def test_macs(m, n, k, g, p, input_size, strides, padding):
  """MACs = kept weights x output positions, at the layer's real output size."""
  module = SSCConv(n, k, strides, padding, g=g, p=p)
  x = jnp.zeros((1,) + input_size + (m,))
  out = jax.eval_shape(functools.partial(module.init_with_output, jax.random.key(0)), x)[0]
  size = conv_output_size(input_size, k, strides, padding)
  assert out.shape[1:3] == size
  assert ssc_structure(m, n, k, g, p).macs(size) == spec_mask(m, n, k, g, p).sum() * size[0] * size[1]


# --- special cases of the spec: equal to flax nn.Conv on the same weights ----

def _flax_conv(features, k, groups, kernel, bias, x, strides=1, padding='SAME'):
  conv = nn.Conv(features, (k, k), strides, padding, feature_group_count=groups, precision=HIGHEST)
  return conv.apply({'params': {'kernel': kernel, 'bias': bias}}, x)


@pytest.mark.parametrize('m,n,k,g,strides,padding', [
    (12, 20, 3, 1, 1, 'SAME'), (12, 20, 3, 4, 2, 'SAME'), (16, 16, 5, 16, 1, 'VALID'),
    (24, 24, 3, 24, 2, 'SAME')])
def test_dense_grouped_depthwise_equal_flax_conv(m, n, k, g, strides, padding):
  module = SSCConv(n, k, strides, padding, g=g, p=None, precision=HIGHEST)
  x = normal(0, (2, 9, 9, m))
  variables = perturbed_variables(module, x)
  params = variables['params']
  expected = _flax_conv(n, k, g, params['kernel'], params['bias'], x, strides, padding)
  assert relative_error(module.apply(variables, x), expected) < 1e-6


def test_dense_with_any_p_equals_flax_conv():
  """g = 1 leaves nothing to mix: any p gives the dense convolution."""
  module = SSCConv(10, 3, g=1, p=3, precision=HIGHEST)
  x = normal(0, (2, 6, 6, 7))
  variables = perturbed_variables(module, x)
  params = variables['params']
  assert 'mix' not in params
  expected = _flax_conv(10, 3, 1, params['kernel'], params['bias'], x)
  assert relative_error(module.apply(variables, x), expected) < 1e-6


@pytest.mark.parametrize('p', [1, 4])
def test_grouped_pointwise_equals_flax_conv(p):
  """K=1, g=None, p=P is nn.Conv(feature_group_count=P) on residue-ordered channels."""
  m, n = 16, 24
  module = SSCConv(n, 1, g=None, p=p, precision=HIGHEST)
  x = normal(0, (2, 5, 5, m))
  variables = perturbed_variables(module, x)
  mix, bias = variables['params']['mix'], variables['params']['bias']  # (P, M/P, N/P)
  in_order = np.arange(m).reshape(m // p, p).T.reshape(-1)  # residue-major
  out_order = np.arange(n).reshape(n // p, p).T.reshape(-1)
  kernel = jnp.transpose(mix, (1, 0, 2)).reshape(1, 1, m // p, n)
  permuted = _flax_conv(n, 1, p, kernel, bias[out_order], x[..., in_order])
  expected = jnp.zeros_like(permuted).at[..., out_order].set(permuted)
  assert relative_error(module.apply(variables, x), expected) < 1e-6


def test_hetconv_like():
  """g = P, p = 1: KxK within the own group and 1x1 to every other channel."""
  mask = ssc_mask(8, 8, 3, 4, 1)
  centre = mask[1, 1]
  assert centre.all()
  assert mask[0, 0].sum() == 8 * 8 // 4
  assert (mask.sum(axis=(0, 1)) == np.where(mask[0, 0], 9, 1)).all()


# --- training: gradients and optimiser steps stay inside the pattern --------

@pytest.mark.parametrize('m,n,k,g,p', [(12, 18, 3, 5, 4), (16, 16, 3, 4, 2), (9, 9, 1, None, 2)])
def test_gradients_and_sgd_stay_in_pattern(m, n, k, g, p):
  module = SSCConv(n, k, g=g, p=p, precision=HIGHEST)
  x = normal(0, (4, 6, 6, m))
  target = normal(1, (4, 6, 6, n))
  variables = perturbed_variables(module, x)
  structure = module.structure(m)

  def loss_fn(params):
    return jnp.mean((module.apply({'params': params}, x) - target) ** 2)

  grads = jax.grad(loss_fn)(variables['params'])
  # The compact gradient equals the dense-kernel gradient read at the pattern.
  dense = dense_kernel(structure, variables)

  def dense_loss(kernel):
    y = reference_conv(x, kernel, (1, 1), 'SAME') + variables['params']['bias']
    return jnp.mean((y - target) ** 2)

  dense_grad = np.asarray(jax.grad(dense_loss)(dense))
  compact_as_dense = np.asarray(dense_kernel(structure, grads))
  mask = structure.mask
  np.testing.assert_allclose(compact_as_dense[mask], dense_grad[mask], rtol=1e-4, atol=1e-6)
  assert not compact_as_dense[~mask].any()
  assert np.abs(dense_grad[~mask]).max() > 0  # the pattern really blocks gradient

  optimizer = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  params, state = variables['params'], optimizer.init(variables['params'])
  for _ in range(3):
    updates, state = optimizer.update(jax.grad(loss_fn)(params), state, params)
    params = optax.apply_updates(params, updates)
  stepped = np.asarray(dense_kernel(structure, params))
  assert not stepped[~mask].any()
  assert (stepped[mask] != np.asarray(dense)[mask]).all()


# --- transformations, dtypes, composition -----------------------------------

def test_jit_vmap_remat_and_batch_dims():
  module = SSCConv(12, 3, g=3, p=5, precision=HIGHEST)
  x = normal(0, (3, 2, 7, 7, 10))
  variables = perturbed_variables(module, x[0])
  eager = module.apply(variables, x[0])
  assert relative_error(jax.jit(module.apply)(variables, x[0]), eager) < 1e-6
  vmapped = jax.vmap(lambda xi: module.apply(variables, xi))(x)
  assert relative_error(vmapped[0], eager) < 1e-6
  assert relative_error(module.apply(variables, x), vmapped) < 1e-6  # extra batch dims
  unbatched = module.apply(variables, x[0, 0])
  assert relative_error(unbatched, eager[0]) < 1e-6

  def loss(params, remat):
    layer = nn.remat(SSCConv) if remat else SSCConv
    out = layer(12, 3, g=3, p=5, precision=HIGHEST).apply({'params': params}, x[0])
    return jnp.sum(jnp.sin(out))

  g_plain = jax.grad(loss)(variables['params'], False)
  g_remat = jax.jit(jax.grad(loss), static_argnums=1)(variables['params'], True)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    assert relative_error(a, b) < 1e-5


_EXPLICIT_SCRIPT = """
import sys, jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from ssc_jax import SSCConv
mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Explicit,))
worst = 0.0
for implementation in ('grouped', 'taps', 'dense'):
  for g, p, m, n in ((4, 2, 16, 32), (3, 5, 10, 14), (None, 4, 8, 8)):
    layer = SSCConv(n, 3, strides=2, g=g, p=p, implementation=implementation,
                    precision=jax.lax.Precision.HIGHEST)
    x = jax.random.normal(jax.random.key(0), (8, 9, 9, m))
    variables = layer.init(jax.random.key(1), x)
    loss = lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x)))
    plain = (jax.jit(layer.apply)(variables, x), jax.jit(jax.grad(loss))(variables, x))
    with jax.set_mesh(mesh):
      xs = jax.device_put(x, NamedSharding(mesh, P('data')))
      out = jax.jit(layer.apply)(variables, xs)
      assert out.sharding.spec[0] == 'data', (implementation, out.sharding)
      sharded = (out, jax.jit(jax.grad(loss))(variables, xs))
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      worst = max(worst, np.linalg.norm(a - b) / np.linalg.norm(b))
if jax.device_count() == 4:  # inside a shard_map that is manual over 'data' only
  mesh = jax.make_mesh((2, 2), ('data', 'model'), axis_types=(AxisType.Explicit,) * 2)
  layer = SSCConv(32, 3, g=4, p=2, implementation='grouped')
  x = jax.random.normal(jax.random.key(2), (8, 9, 9, 16))
  variables = layer.init(jax.random.key(3), x)
  plain = np.asarray(layer.apply(variables, x), np.float64)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P('data')))
    out = jax.jit(jax.shard_map(lambda x: layer.apply(variables, x), in_specs=P('data'),
                                out_specs=P('data'), axis_names={'data'}))(xs)
  worst = max(worst, np.linalg.norm(np.asarray(out) - plain) / np.linalg.norm(plain))
print(worst)
"""


@pytest.mark.parametrize('devices', [1, pytest.param(4, marks=pytest.mark.slow)])
def test_explicit_sharding_mesh(devices):
  """Under `jax.set_mesh` with explicit axes and a sharded batch, every implementation
  keeps the batch sharding and gives the unsharded outputs and gradients."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             PYTHONPATH=repo + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', _EXPLICIT_SCRIPT], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert float(result.stdout.split()[-1]) < 1e-5


def test_bfloat16_compute_with_float32_params():
  module = SSCConv(32, 3, g=4, p=3, dtype=jnp.bfloat16)
  x = normal(0, (2, 8, 8, 24))
  variables = perturbed_variables(module, x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
  out = module.apply(variables, x)
  assert out.dtype == jnp.bfloat16
  reference = SSCConv(32, 3, g=4, p=3, precision=HIGHEST).apply(variables, x)
  assert relative_error(out, reference) < 1e-2
  grads = jax.grad(lambda v: jnp.sum(module.apply(v, x).astype(jnp.float32)))(variables)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(grads))


class _SmallNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(SSCConv(16, 3, g=None, p=1, name='stem')(x))
    x = nn.relu(SSCConv(24, 3, strides=2, g=4, p=3, use_bias=False)(x))
    x = nn.BatchNorm(use_running_average=True)(x)
    return nn.Dense(5)(x.mean(axis=(1, 2)))


def test_inside_a_linen_model_and_nnx_bridge():
  from flax import nnx
  x = normal(0, (2, 8, 8, 3))
  variables = _SmallNet().init(jax.random.key(1), x)
  assert variables['params']['stem']['mix'].shape == (1, 3, 16)
  expected = _SmallNet().apply(variables, x)
  assert expected.shape == (2, 5)

  bridged = nnx.bridge.ToNNX(SSCConv(12, 3, g=3, p=2), rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(bridged, x)
  out = bridged(x)
  kernel = nnx.state(bridged, nnx.Param)
  linen_vars = {'params': {k: v.value if hasattr(v, 'value') else v for k, v in
                           nnx.to_pure_dict(kernel).items()}}
  np.testing.assert_allclose(out, SSCConv(12, 3, g=3, p=2).apply(linen_vars, x), rtol=1e-5, atol=1e-6)
  graphdef, state = nnx.split(bridged)
  grads = nnx.grad(lambda model: jnp.sum(model(x) ** 2))(bridged)
  assert set(nnx.to_pure_dict(grads)) == {'kernel', 'mix', 'bias'}
  del graphdef, state


# --- spatial patterns (taps) -------------------------------------------------

# (M, N, K, g, p, taps): every pattern; non-divisible g and p; K = 5; odd N for 'alternate'.
PATTERNS = [
    (16, 16, 3, 4, 2, 'cross'), (12, 20, 3, 5, 3, 'cross'), (16, 24, 3, 4, None, 'x'),
    (10, 14, 3, 3, 4, 'x'), (9, 13, 3, 3, 2, 'alternate'), (16, 16, 3, 4, 2, 'alternate'),
    (8, 12, 5, 2, 3, 'cross'), (8, 11, 5, 3, None, 'alternate'), (12, 12, 5, 4, 5, 'x'),
    (6, 10, 3, 1, None, 'cross'), (12, 9, 3, 3, 2, '011/111/000'),
    (10, 10, 3, 2, 3, ((1, 0, 0), (0, 1, 0), (0, 0, 1))),
]


def _pattern_id(case):
  return '-'.join(str(v).replace(' ', '') for v in case)


_FAST_PATTERNS = {1, 3, 4, 6, 9, 10}  # cross, x, alternate with odd N, K = 5, g = 1, a grid


@pytest.mark.parametrize('case', [pytest.param(c, marks=() if i in _FAST_PATTERNS else pytest.mark.slow)
                                  for i, c in enumerate(PATTERNS)], ids=_pattern_id)
@pytest.mark.parametrize('implementation', ['grouped', 'taps', 'dense'])
def test_patterns_match_dense_reference(case, implementation):
  """Outputs, input gradients and weight gradients equal the dense convolution's, in float32
  (every other case strided; tests/test_lowerings.py covers the other lowerings)."""
  m, n, k, g, p, taps = case
  strides = 1 + PATTERNS.index(case) % 2
  module = SSCConv(n, k, strides, 'SAME', g=g, p=p, taps=taps, precision=HIGHEST,
                   implementation=implementation)
  x = normal(m + 31 * n + k, (2, 9, 8, m))
  variables = perturbed_variables(module, x, seed=k)
  structure = module.structure(m)
  mask = spec_mask(m, n, k, g, p, taps)
  np.testing.assert_array_equal(structure.mask, mask)
  kernel = dense_kernel(structure, variables)
  np.testing.assert_array_equal(np.asarray(kernel) != 0, mask)
  target = normal(7, jax.eval_shape(module.apply, variables, x).shape)
  pads = lax.padtype_to_pads((9, 8), (k, k), (strides, strides), 'SAME')
  bias = variables['params']['bias']

  def reference_loss(dense, x):
    y = reference_conv(x, dense, (strides, strides), pads) + bias
    return jnp.sum((y - target) ** 2), y

  def loss(params, x):
    y = module.apply({'params': params}, x)
    return jnp.sum((y - target) ** 2), y

  (_, y), (grads, x_grad) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
      variables['params'], x)
  (_, y_ref), (dense_grad, x_grad_ref) = jax.jit(jax.value_and_grad(
      reference_loss, (0, 1), has_aux=True))(kernel, x)
  assert relative_error(y, y_ref) < 1e-5
  assert relative_error(x_grad, x_grad_ref) < 1e-5
  compact_as_dense = np.asarray(dense_kernel(structure, grads))
  assert relative_error(compact_as_dense[mask], np.asarray(dense_grad)[mask]) < 1e-5
  assert not compact_as_dense[~mask].any()


def test_pattern_parameters_are_compact():
  """A 3x3 'cross' layer stores 5/9 of the KxK weights of a 'full' one; counts are the mask's."""
  x = jnp.zeros((1, 4, 4, 64))
  full = jax.eval_shape(SSCConv(128, 3, g=4, p=2).init, jax.random.key(0), x)['params']
  cross = jax.eval_shape(SSCConv(128, 3, g=4, p=2, taps='cross').init, jax.random.key(0), x)['params']
  assert full['kernel'].shape == (3, 3, 16, 128) and cross['kernel'].shape == (5, 16, 128)
  assert cross['mix'].shape == full['mix'].shape
  odd = jax.eval_shape(SSCConv(11, 5, g=3, taps='alternate').init, jax.random.key(0),
                       jnp.zeros((1, 6, 6, 8)))['params']
  assert odd['kernel'].shape == (spec_mask(8, 11, 5, 3, None, 'alternate').sum(),)
  for m, n, k, g, p, taps in PATTERNS:
    structure = ssc_structure(m, n, k, g, p, taps)
    assert structure.num_weights == spec_mask(m, n, k, g, p, taps).sum()
    assert structure.num_kernel_weights == sum(
        spec_taps(k, taps, o).sum() * sum((c * g) // m == (o * g) // n for c in range(m))
        for o in range(n))


def test_pattern_normalisation_and_k1():
  """Patterns that keep every position are 'full'; K = 1 layers ignore the pattern."""
  assert ssc_structure(8, 8, 1, None, 2, 'cross').taps == 'full'
  assert ssc_structure(8, 8, 3, 2, 2, '111/111/111').taps == 'full'
  assert ssc_structure(8, 8, 3, 2, 2, [[0, 1, 0], [1, 1, 1], [0, 1, 0]]).taps == 'cross'
  assert ssc_structure(8, 8, 3, 2, 2, '011/111/110').taps == ((0, 1, 1), (1, 1, 1), (1, 1, 0))
  assert ssc_structure(8, 8, 3, None, 2, 'cross').taps == 'full'  # no KxK part to pattern
  np.testing.assert_array_equal(ssc_mask(8, 8, 3, 2, 2, '010/111/010'),
                                ssc_mask(8, 8, 3, 2, 2, 'cross'))


@pytest.mark.parametrize('taps,match', [
    ('plus', r"taps='plus' must be one of \('full', 'cross', 'x', 'alternate'\)"),
    ('010/101/010', 'contains the centre'), ('01/11', 'a 3x3 grid'),
    ([[0, 2, 0], [1, 1, 1], [0, 1, 0]], 'grid of 0/1')])
def test_bad_patterns_name_the_field(taps, match):
  with pytest.raises(ValueError, match=match) as error:
    SSCConv(8, 3, g=2, taps=taps, name='c3').init(jax.random.key(0), jnp.ones((1, 4, 4, 8)))
  assert "SSCConv 'c3': taps=" in str(error.value)


def _dot_general_contractions(fn, *args):
  """The contracted sizes of every dot_general in fn's jaxpr."""
  sizes = []
  for eqn in jax.make_jaxpr(fn)(*args).eqns:
    inner = [v for value in eqn.params.values()  # the jaxprs a custom_vjp or pjit holds
             for v in (value if isinstance(value, (tuple, list)) else [value])
             if hasattr(v, 'eqns')]
    for sub in [eqn] + [e for j in inner for e in j.eqns]:
      if sub.primitive.name == 'dot_general':
        (lhs, _), _ = sub.params['dimension_numbers']
        shape = sub.invars[0].aval.shape
        sizes.append(int(np.prod([shape[d] for d in lhs])))
  return sizes


@pytest.mark.parametrize('taps,windows', [('full', [9]), ('cross', [5]), ('alternate', [5, 5])])
def test_taps_lowering_runs_only_kept_positions(taps, windows):
  """'taps' contracts over the kept positions only: 5 windows for 'cross', not 9."""
  module = SSCConv(32, 3, g=4, p=None, taps=taps, implementation='taps')
  x = normal(0, (2, 8, 8, 32))
  variables = module.init(jax.random.key(1), x)
  assert _dot_general_contractions(module.apply, variables, x) == [w * 8 for w in windows]


def test_structure_arrays_are_read_only():
  """Cached structure arrays cannot be edited by a caller (they are shared by every layer)."""
  structure = ssc_structure(16, 16, 3, 4, 2, 'cross')
  for name in ('mask', 'same_group', 'mix_pairs', 'tap_mask', 'fan_in', 'fan_out'):
    with pytest.raises(ValueError, match='read-only'):
      getattr(structure, name)[0] = 0
  lay = layout_lib.layout(structure)
  with pytest.raises(ValueError, match='read-only'):
    lay.kernel.physical(4).kernel_index[0] = 0
  copy = ssc_mask(16, 16, 3, 4, 2, 'cross')
  copy[:] = False  # ssc_mask hands out a copy
  assert ssc_structure(16, 16, 3, 4, 2, 'cross').mask.any()


def test_fan_out_initialisation():
  """kaiming_normal_fan_out: Var[w] = 2 / fan_out, fan_out = the real outputs of w's input."""
  m, n, k, g, p, taps = 121, 179, 3, 6, 5, 'cross'
  module = SSCConv(n, k, g=g, p=p, taps=taps, use_bias=False,
                   kernel_init=ssc_jax.kaiming_normal_fan_out())
  variables = module.init(jax.random.key(0), jnp.zeros((1, 4, 4, m)))
  kernel = np.asarray(dense_kernel(module.structure(m), variables))
  fan_out = spec_mask(m, n, k, g, p, taps).sum(axis=(0, 1, 3))
  assert len(set(fan_out)) > 1
  sum_sq = (kernel ** 2).sum(axis=(0, 1, 3))  # per input: fan_out * 2 / fan_out = 2
  assert abs(sum_sq.mean() - 2.0) < 0.1


def test_initialisation_uses_the_real_fan_in():
  """Var of each output's weights = 2 / its real fan-in (He), unequal groups included."""
  m, n, k, g, p = 200, 300, 3, 7, 9
  module = SSCConv(n, k, g=g, p=p, use_bias=False,
                   kernel_init=__import__('ssc_jax').he_normal())
  variables = module.init(jax.random.key(0), jnp.zeros((1, 4, 4, m)))
  structure = module.structure(m)
  kernel = np.asarray(dense_kernel(structure, variables))
  fan_in = spec_mask(m, n, k, g, p).sum(axis=(0, 1, 2))
  assert len(set(fan_in)) > 1  # unequal groups: several fan-ins
  sum_sq = (kernel ** 2).sum(axis=(0, 1, 2))
  # E[sum of squares per output] = fan_in * 2 / fan_in = 2; averaged over 300 outputs.
  assert abs(sum_sq.mean() - 2.0) < 0.1
  assert abs((sum_sq / 2.0 - 1).mean()) < 0.05


# --- bad input ---------------------------------------------------------------

@pytest.mark.parametrize('kwargs,field,allowed', [
    (dict(g=0), 'g', '[1, 16]'), (dict(g=-2), 'g', '[1, 16]'), (dict(g=17), 'g', '[1, 16]'),
    (dict(g=2, p=25), 'p', '[1, 24]'), (dict(g=None, p=-1), 'p', '[1, 24]'), (dict(g=None, p=0), 'p', '[1, 24]'),
    (dict(g=2.5), 'g', '[1, 16]')])
def test_out_of_range_settings_name_module_field_and_range(kwargs, field, allowed):
  module = SSCConv(16, 3, name='conv7', **kwargs)
  with pytest.raises(ValueError) as error:
    module.init(jax.random.key(0), jnp.ones((1, 8, 8, 24)))
  message = str(error.value)
  assert "SSCConv 'conv7'" in message and f'{field}=' in message and allowed in message


def test_p_beyond_the_input_channels():
  """p in (M, N]: the mix joins c to n = c + k*p (the seed's p = 64 on 32 -> 64 channels)."""
  module = SSCConv(64, 3, g=32, p=64, precision=HIGHEST)
  x = normal(0, (2, 6, 6, 32))
  variables = perturbed_variables(module, x)
  kernel = dense_kernel(module.structure(32), variables)
  np.testing.assert_array_equal(np.asarray(kernel) != 0, spec_mask(32, 64, 3, 32, 64))
  expected = reference_conv(x, kernel, (1, 1), 'SAME') + variables['params']['bias']
  assert relative_error(module.apply(variables, x), expected) < 1e-5


def test_unknown_implementation():
  with pytest.raises(ValueError, match=r"SSCConv 'c': implementation='cudnn': lowering 'cudnn' must be"):
    SSCConv(4, 3, g=2, implementation='cudnn', name='c').init(jax.random.key(0), jnp.ones((1, 4, 4, 4)))


def test_both_parts_disabled_and_kernel_too_large():
  with pytest.raises(ValueError, match=r"SSCConv.*g and p are both None"):
    SSCConv(4, 3, g=None, p=None).init(jax.random.key(0), jnp.ones((1, 8, 8, 4)))
  with pytest.raises(ValueError, match=r"SSCConv 'big'.*kernel_size=5 does not fit.*VALID"):
    SSCConv(4, 5, padding='VALID', name='big').init(jax.random.key(0), jnp.ones((1, 4, 8, 4)))
  with pytest.raises(ValueError, match='kernel_size'):
    SSCConv(4, 0).init(jax.random.key(0), jnp.ones((1, 4, 8, 4)))
