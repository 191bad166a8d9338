"""Every lowering and every per-pass choice against the dense reference; the autotuner."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssc_jax import SSCConv, dense_kernel
from ssc_jax import config_lib
from ssc_jax import models
from ssc_jax import optim
from ssc_jax import sharding
from ssc_jax import train
from ssc_jax import tuning
from ssc_jax.ssc import autotune
from ssc_jax.ssc import layout as layout_lib
from ssc_jax.ssc import lowerings
from ssc_jax.ssc import structure
from test_layers import normal, perturbed_variables

HIGHEST = lax.Precision.HIGHEST

# (M, N, K, strides, g, p, taps): patterns, non-divisible g and p, K = 5 and 1, strides.
CASES = [
    (16, 24, 3, 1, 4, 3, 'cross'), (12, 20, 3, 2, 6, 5, 'alternate'), (10, 14, 3, 1, 3, 4, 'x'),
    (9, 13, 5, 2, 3, 2, 'alternate'), (16, 16, 3, 2, 8, None, 'full'), (12, 12, 1, 1, None, 5, 'full'),
    (8, 12, 3, 1, 1, None, 'cross'), (20, 10, 3, 1, 10, 3, 'full'),
]


def _case_id(case):
  return '-'.join(str(v) for v in case)


def _setup(case, seed=0):
  m, n, k, strides, g, p, taps = case
  module = SSCConv(n, k, strides, g=g, p=p, taps=taps, use_bias=False, precision=HIGHEST,
                   implementation='dense')
  x = normal(seed, (2, 9, 8, m))
  params = perturbed_variables(module, x, seed + 1)['params']
  structure = module.structure(m)
  kernel = dense_kernel(structure, params)
  pads = lax.padtype_to_pads((9, 8), (k, k), (strides, strides), 'SAME')
  target = normal(seed + 3, jax.eval_shape(module.apply, {'params': params}, x).shape)
  return module, x, params, structure, kernel, pads, target


def _reference(x, kernel, pads, strides, target):
  """Output, input gradient and dense-kernel gradient of sum((conv - target)^2)."""
  def loss(kernel, x):
    y = lax.conv_general_dilated(x, kernel, (strides, strides), pads,
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=HIGHEST)
    return jnp.sum((y - target) ** 2), y
  (_, y), (kernel_grad, x_grad) = jax.value_and_grad(loss, (0, 1), has_aux=True)(kernel, x)
  return y, x_grad, kernel_grad


def _relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _check(module, implementation, x, params, structure, reference, target):
  module = module.clone(implementation=implementation)

  def loss(params, x):
    y = module.apply({'params': params}, x)
    return jnp.sum((y - target) ** 2), y

  (_, y), (grads, x_grad) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x)
  y_ref, x_grad_ref, kernel_grad_ref = reference
  assert _relative(y, y_ref) < 1e-5
  assert _relative(x_grad, x_grad_ref) < 1e-5
  mask = structure.mask
  grads_dense = np.asarray(dense_kernel(structure, grads))
  assert _relative(grads_dense[mask], np.asarray(kernel_grad_ref)[mask]) < 1e-5
  assert not grads_dense[~mask].any()


@pytest.mark.parametrize('case', [pytest.param(c, marks=() if i in (0, 3, 5, 6) else pytest.mark.slow)
                                  for i, c in enumerate(CASES)], ids=_case_id)
def test_every_lowering_matches_the_dense_reference(case):
  """Outputs, input gradients and weight gradients of every candidate lowering, float32."""
  module, x, params, structure, kernel, pads, target = _setup(case)
  reference = _reference(x, kernel, pads, case[3], target)
  names = lowerings.candidates(layout_lib.layout(structure))
  assert 'dense' in names and ('shifts' in names) == (structure.kernel_size != (1, 1))
  extra = {'shifts', 'plain', 'rects+dconv'}  # and the export's lowerings
  if structure.g:  # every grouping of 'rects' with the residue-order mix
    extra |= {f'rects{d}+pconv' for d in range(1, structure.g) if structure.g % d == 0}
  extra |= set(lowerings.candidates(layout_lib.layout(structure), 'tpu'))
  if structure.g:  # every coarser slicing, down to one slice
    extra |= {f'sliced{d}' for d in range(1, structure.g) if structure.g % d == 0}
  for name in sorted(set(names) | extra):
    _check(module, name, x, params, structure, reference, target)


@pytest.mark.parametrize('case', [CASES[1], CASES[3]], ids=_case_id)
def test_one_lowering_per_pass_matches_the_dense_reference(case):
  """A (forward, input_grad, weight_grad) choice through the custom VJP gives the same values."""
  module, x, params, structure, kernel, pads, target = _setup(case, seed=5)
  reference = _reference(x, kernel, pads, case[3], target)
  names = lowerings.candidates(layout_lib.layout(structure))
  for choice in [(names[-1], 'dense', 'shifts'), ('shifts', names[-1], 'grouped'),
                 ('dense', 'grouped', names[-1])]:
    _check(module, choice, x, params, structure, reference, target)


def test_channel_takes_read_zeros_for_padding_and_never_collide():
  """The padded input of a non-divisible grouping reads zeros there; no index repeats, so the
  gradient is a scatter without collisions, and forward-mode autodiff works."""
  physical = layout_lib.layout(SSCConv(13, 3, g=3).structure(10)).kernel.physical(3)
  index = physical.input_index  # groups of 4, 3, 3 channels, padded to 4
  assert list(index) == [0, 1, 2, 3, 4, 5, 6, 10, 7, 8, 9, 11]
  x = jax.random.normal(jax.random.key(0), (2, 3, 10))
  weight = jax.random.normal(jax.random.key(1), (2, 3, 12))
  take = lambda x: lowerings._take_channels(x, index)
  padded = np.concatenate([np.asarray(x), np.zeros((2, 3, 2))], -1)
  np.testing.assert_array_equal(take(x), padded[..., index])
  want = np.zeros((2, 3, 12))
  np.add.at(want, (Ellipsis, index), np.asarray(weight))
  loss = lambda x: jnp.sum(take(x) * weight)
  np.testing.assert_allclose(jax.grad(loss)(x), want[..., :10], rtol=1e-6)
  hlo = jax.jit(jax.grad(loss)).lower(x).as_text()
  assert 'scatter' in hlo and 'unique_indices = true' in hlo
  _, tangent = jax.jvp(take, (x,), (weight[..., :10],))
  np.testing.assert_array_equal(tangent, np.concatenate(
      [np.asarray(weight[..., :10]), np.zeros((2, 3, 2))], -1)[..., index])


@pytest.mark.parametrize('k, taps', [(3, 'cross'), (3, 'x'), (3, '110/011/001'), (5, 'cross'),
                                     (5, 'alternate'), (3, 'full')])
def test_split_covers_each_kept_position_once_with_dilated_rectangles(k, taps):
  layout = layout_lib.layout(SSCConv(12, k, g=4, p=2, taps=taps).structure(8))
  covered = []
  for grid in layout.subgrids:
    for axis in (grid.rows, grid.cols):
      assert len(set(np.diff(axis))) <= 1  # equally spaced: one dilation
    covered += [r * k + c for r in grid.rows for c in grid.cols]
    np.testing.assert_array_equal(grid.index,
                                  layout.dense_index[np.ix_(grid.rows, grid.cols)])
  assert sorted(covered) == list(layout.shift_positions)
  if taps == 'cross' and k == 3:
    assert [(g.rows, g.cols) for g in layout.subgrids] == [((0, 2), (1,)), ((1,), (0, 1, 2))]
  assert ('split' in lowerings.candidates(layout)) == (taps != 'full')


@pytest.mark.parametrize('padding, strides', [('VALID', 1), (((0, 2), (2, 0)), 2)])
def test_split_crops_where_a_rectangle_starts_inside_the_padding(padding, strides):
  """Sub-kernels that start past the low padding take negative padding (a crop): values and
  both gradients equal the dense lowering's."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 6))
  module = SSCConv(8, 3, strides, padding=padding, g=2, p=2, taps='cross', precision=HIGHEST,
                   implementation='split')
  params = module.init(jax.random.key(1), x)['params']
  dense = module.clone(implementation='dense')

  def value_and_grads(m):
    loss = lambda params, x: jnp.sum(jnp.sin(m.apply({'params': params}, x)))
    return m.apply({'params': params}, x), jax.grad(loss, (0, 1))(params, x)

  for got, want in zip(jax.tree.leaves(value_and_grads(module)),
                       jax.tree.leaves(value_and_grads(dense))):
    assert _relative(got, want) < 1e-5


def test_taps_and_shifts_run_only_the_kept_positions():
  """'shifts' multiplies 5 shifted inputs for a 3x3 'cross' (its mix rides on the centre)."""
  layout = layout_lib.layout(SSCConv(16, 3, g=4, p=2, taps='cross').structure(16))
  assert len(layout.shift_positions) == 5 and layout.shift_positions == (1, 3, 4, 5, 7)
  full = layout_lib.layout(SSCConv(16, 3, g=4, p=2).structure(16))
  assert len(full.shift_positions) == 9


@pytest.mark.parametrize('implementation,match', [
    ('grouped3', r"lowering 'grouped3': 3 physical groups must divide g=4"),
    ('convolve', r"lowering 'convolve' must be 'dense', 'shifts', 'split', 'plain', or"),
    ('taps2', r"lowering 'taps2' must be .*'taps', and <mix>"),
    ('grouped0+matmul', r"lowering 'grouped0\+matmul' must be .*G >= 1 dividing"),
    (('dense', 'taps'), r'a \(forward, input_grad, weight_grad\) triple')])
def test_bad_lowering_names_the_field(implementation, match):
  with pytest.raises(ValueError, match=match) as error:
    SSCConv(8, 3, g=4, p=2, implementation=implementation, name='c').init(
        jax.random.key(0), jnp.ones((1, 4, 4, 8)))
  assert "SSCConv 'c': implementation=" in str(error.value)


def test_names_that_no_layer_runs_are_not_lowerings():
  """`is_name` (which config.lowering is checked by) refuses what `check` refuses on any
  layer: a group count on 'taps', zero groups."""
  for name in ('dense', 'split', 'taps', 'taps+matmul', 'grouped4', 'sliced2+einsum', 'grouped1'):
    assert lowerings.is_name(name), name
  for name in ('taps2', 'grouped0', 'sliced0+matmul', 'grouped+conv', 'auto', None):
    assert not lowerings.is_name(name), name
  config = config_lib.load_config_module('configs/default.py').get_config()
  config.lowering = 'taps2'
  with pytest.raises(ValueError, match=r"config.lowering='taps2' must be 'auto' or "
                     r"a lowering: 'dense', .*'grouped<G>'"):
    config_lib.check_config(config)


def test_a_group_count_on_a_layer_without_kxk_part_says_so():
  with pytest.raises(ValueError, match=r"SSCConv 'c': implementation='grouped2': lowering "
                     r"'grouped2' gives 2 physical groups, but the layer has no KxK part"):
    SSCConv(8, 1, g=None, p=2, implementation='grouped2', name='c').init(
        jax.random.key(0), jnp.ones((1, 4, 4, 8)))


# --- the autotuner -------------------------------------------------------------

def _layer(case=(16, 24, 3, 1, 4, 3, 'cross'), batch=2):
  m, n, k, strides, g, p, taps = case
  module = SSCConv(n, k, strides, g=g, p=p, taps=taps)
  x = jnp.zeros((batch, 8, 8, m))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  return module, variables, x


def test_measure_times_every_candidate_of_every_pass():
  module, variables, x = _layer()
  layers = autotune.layers_of(module.apply, variables, x)
  assert len(layers) == 1
  (key, layout, geometry), = layers.values()
  times = autotune.measure(layout, geometry, 2, jnp.float32, repeats=1, workers=2)
  options = [','.join(c) for c in autotune.compositions(times, layout)]
  if len(options) > 1:
    assert set(times) == set(autotune.PASSES) | {'training'}
    assert list(times['training']) == options
    assert all(ms > 0 for ms in times['training'].values())
  else:  # every pass picked 'dense' (timing noise may have it so): nothing to compare
    assert set(times) == set(autotune.PASSES)
  for which in autotune.PASSES:
    assert {'dense', 'shifts', 'kxk:grouped1', 'kxk:taps', 'mix:grouped+einsum',
            'mix:grouped+matmul'} <= set(times[which])
    # XLA:CPU's grouped-convolution weight gradient is known to be slow: not timed there.
    assert ('kxk:grouped' in times[which]) == (which != 'weight_grad' or
                                               jax.default_backend() != 'cpu')
    assert all(ms > 0 for ms in times[which].values())
    name, ms = autotune.best(times[which])
    lowerings.check(name, layout)
    assert ms == min(ms for ms in [times[which]['dense'], times[which]['shifts'], ms])


def test_compositions_of_the_per_pass_picks():
  """Picks, each pick in every pass (not a slow grouped weight gradient), the best whole-layer
  lowering, dense; no repeats."""
  module, variables, x = _layer()
  (key, layout, geometry), = autotune.layers_of(module.apply, variables, x).values()
  parts = {'dense': 9.0, 'shifts': 8.0, 'split': 7.0, 'kxk:taps': 3.0, 'kxk:grouped': 1.0,
           'mix:grouped+einsum': 2.0, 'mix:grouped+matmul': 1.0}
  times = {'forward': parts, 'input_grad': {**parts, 'shifts': 0.5},
           'weight_grad': {**parts, 'kxk:grouped': 9.0, 'split': 0.5}}
  grouped_dw_slow = jax.default_backend() == 'cpu'
  assert autotune.compositions(times, layout) == [
      ('grouped+matmul', 'shifts', 'split')] + [
      lowerings.as_choice(n) for n in ['grouped+matmul'] * (not grouped_dw_slow) +
      ['shifts', 'split', 'dense']]
  dense = {w: {'dense': 1.0, 'shifts': 2.0} for w in autotune.PASSES}
  assert autotune.compositions(dense, layout) == [('dense',) * 3]  # one option: not timed


def test_training_step_returns_the_output_and_gradients():
  module, variables, x = _layer()
  (key, layout, geometry), = autotune.layers_of(module.apply, variables, x).values()
  x, kernel, mix, dy = autotune.inputs(layout, geometry, 2, jnp.float32)
  run = lambda x, k, m: lowerings.run('dense', x, k, m, layout, geometry, None)
  y, grads = jax.jit(autotune.training_step(run))(x, kernel, mix, dy)
  np.testing.assert_allclose(y, run(x, kernel, mix), rtol=1e-5, atol=1e-5)
  want = jax.grad(lambda *a: jnp.sum(run(*a) * dy), argnums=(0, 1, 2))(x, kernel, mix)
  for got, expected in zip(grads, want):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_tune_keeps_the_fastest_composition(tmp_path, monkeypatch):
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'cache.json'))
  def measure(layout, geometry, batch, dtype, passes=autotune.PASSES, **_):
    times = _fake_measure([])(layout, geometry, batch, dtype, passes)
    times['training'] = {'taps+matmul,dense,shifts': 3.0, 'shifts,shifts,shifts': 2.0,
                         'dense,dense,dense': 2.0}
    return times
  monkeypatch.setattr(autotune, 'measure', measure)
  module, variables, x = _layer(batch=8)
  layers = autotune.layers_of(module.apply, variables, x)
  plan = autotune.tune(layers)
  assert set(plan.choices.values()) == {('shifts',) * 3}  # the first of the fastest
  saved = json.loads((tmp_path / 'cache.json').read_text())['entries']
  assert [e['choice'] for e in saved.values()] == [['shifts'] * 3]


def test_replicated_runs_each_copy_on_its_own_inputs():
  """A timed call of several copies computes each copy's pass, none merged or dropped."""
  module, variables, x = _layer()
  (key, layout, geometry), = autotune.layers_of(module.apply, variables, x).values()
  copies = [autotune.inputs(layout, geometry, 2, jnp.float32, seed) for seed in range(3)]
  pass_fn = autotune._pass_fn('taps+matmul', layout, geometry, 'weight_grad')
  together = jax.jit(autotune.replicated(pass_fn))(copies)
  assert len(together) == 3
  for args, result in zip(copies, together):
    for got, want in zip(result, pass_fn(*args)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(together[0][0], together[1][0])  # different inputs, different results
  times = autotune.measure(layout, geometry, 2, jnp.float32, ('forward',), repeats=1, workers=2,
                           copies=2)
  assert times['forward'] and all(ms > 0 for ms in times['forward'].values())


def test_best_adds_the_fastest_parts():
  times = {'dense': 9.0, 'shifts': 8.0, 'kxk:grouped': 5.0, 'kxk:taps': 3.0,
           'mix:grouped+einsum': 2.0, 'mix:grouped+matmul': 1.0}
  assert autotune.best(times) == ('taps+matmul', 4.0)
  assert autotune.best({**times, 'shifts': 3.5}) == ('shifts', 3.5)
  assert autotune.best({'dense': 2.0, 'shifts': 3.0, 'kxk:grouped1': 1.5}) == ('grouped1', 1.5)


def test_ms_of_reads_what_best_adds():
  times = {'dense': 9.0, 'shifts': 8.0, 'kxk:grouped': 5.0, 'kxk:taps': 3.0,
           'mix:grouped+einsum': 2.0, 'mix:grouped+matmul': 1.0}
  assert autotune.ms_of(times, autotune.best(times)[0]) == autotune.best(times)[1] == 4.0
  assert autotune.ms_of(times, 'grouped') == 7.0  # no mix named: the einsum
  assert autotune.ms_of(times, 'taps+einsum') == 5.0
  assert autotune.ms_of(times, 'shifts') == 8.0
  assert autotune.ms_of(times, 'sliced') == float('inf')  # not timed
  assert autotune.ms_of({'dense': 2.0, 'mix:grouped+matmul': 1.0}, 'grouped+matmul') == 1.0
  with pytest.raises(ValueError, match="'slice' is not a lowering name"):
    autotune.ms_of(times, 'slice')


def test_a_foreign_cache_file_reads_as_empty(tmp_path):
  for text in ('[1, 2]', '{"format": 0, "entries": {"k": {}}}', 'not json'):
    (tmp_path / 'cache.json').write_text(text)
    assert autotune.Cache(tmp_path / 'cache.json').entries == {}


def test_layer_key_id_round_trip():
  for key in (autotune.LayerKey('cpu', 'cpu', 1, 64, (32, 32), 32, 64, (3, 3), (2, 2),
                                ((1, 1), (0, 1)), 4, None, 'cross', 'float32'),
              autotune.LayerKey('gpu', 'NVIDIA H100 80GB HBM3', 8, 16, (7, 9), 512, 2048,
                                (1, 1), (1, 1), ((0, 0), (0, 0)), None, 25, '010/111/010',
                                'bfloat16'),
              autotune.LayerKey('cpu', 'cpu', 1, 2, (8, 8), 8, 8, (3, 3), (1, 1),
                                ((-1, 2), (0, -1)), 2, 2, 'x', 'float32')):  # crops
    assert autotune.LayerKey.from_id(key.id) == key
  with pytest.raises(ValueError, match='not an SSC layer key id'):
    autotune.LayerKey.from_id('cpu|cpu|x1')


def _fake_measure(calls):
  """Timings that make each pass pick a different lowering (and count the calls)."""
  def measure(layout, geometry, batch, dtype, passes=autotune.PASSES, **_):
    calls.append((layout, batch))
    base = {'dense': 5.0, 'shifts': 4.0}
    if layout.kernel is not None:
      base.update({'kxk:taps': 1.0, 'kxk:grouped': 2.0})
    if layout.mix is not None:
      base.update({'mix:grouped+matmul': 0.5, 'mix:grouped+einsum': 0.6})
    out = {'forward': dict(base), 'input_grad': {**base, 'dense': 0.1},
           'weight_grad': {**base, 'shifts': 0.1}}
    return {which: out[which] for which in passes}
  return measure


def test_tune_caches_its_choices_and_choose_follows_plan_cache_rule(tmp_path, monkeypatch):
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'cache.json'))
  calls = []
  monkeypatch.setattr(autotune, 'measure', _fake_measure(calls))
  module, variables, x = _layer(batch=8)
  layers = autotune.layers_of(module.apply, variables, x)
  key_id = next(iter(layers))
  plan = autotune.tune(layers, batch_divisor=2)
  assert plan.choices[key_id] == ('taps+matmul', 'dense', 'shifts') and calls[0][1] == 4  # 8 / 2
  saved = json.loads((tmp_path / 'cache.json').read_text())
  assert saved['entries'][key_id]['choice'] == ['taps+matmul', 'dense', 'shifts']
  assert autotune.tune(layers).choices == plan.choices and len(calls) == 1  # cached
  (key, layout, geometry), = layers.values()
  assert autotune.choose(layout, geometry, key.batch, key.dtype) == plan.choices[key_id]
  with autotune.installed(autotune.Plan({key_id: lowerings.Choice('dense', 'taps', 'grouped')})):
    assert autotune.choose(layout, geometry, key.batch, key.dtype) == ('dense', 'taps', 'grouped')
    with autotune.installed(autotune.Plan(force='grouped1')):
      assert autotune.choose(layout, geometry, key.batch, key.dtype) == ('grouped1',) * 3
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'empty.json'))
  assert autotune.choose(layout, geometry, key.batch, key.dtype) == autotune.rule(key, layout)
  with autotune.installed(plan):  # the chosen lowerings give the layer's function
    y = module.apply(jax.tree.map(jnp.ones_like, variables), x + 1.0)
  reference = module.clone(implementation='dense').apply(jax.tree.map(jnp.ones_like, variables),
                                                         x + 1.0)
  assert _relative(y, reference) < 1e-5


def test_choose_reads_a_forward_only_entry_in_inference_only(tmp_path, monkeypatch):
  """An entry tuned for the forward pass alone (an eval-only layer's) serves the eval step
  (`autotune.inference()`), not a train step, whose three passes it did not time."""
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'cache.json'))
  monkeypatch.setattr(autotune, 'measure', _fake_measure([]))
  module, variables, x = _layer(batch=8)
  layers = autotune.layers_of(module.apply, variables, x)
  (key, layout, geometry), = layers.values()
  tuned = autotune.tune(layers, passes=('forward',))
  assert set(tuned.choices.values()) == {('taps+matmul',) * 3}  # the fakes' forward winner
  assert autotune.choose(layout, geometry, key.batch, key.dtype) == autotune.rule(key, layout)
  with autotune.inference():
    assert autotune.choose(layout, geometry, key.batch, key.dtype) == ('taps+matmul',) * 3


class _TwoLayers(nn.Module):
  implementation: str = 'auto'

  @nn.compact
  def __call__(self, x):
    x = SSCConv(16, 3, g=4, p=2, taps='cross', implementation=self.implementation)(x)
    x = SSCConv(24, 3, strides=2, g=8, p=3, implementation=self.implementation)(nn.relu(x))
    return SSCConv(8, 1, g=None, p=4, implementation='dense')(x)  # forced: not tuned


def test_tune_model_plans_every_auto_layer_of_a_model(tmp_path, monkeypatch):
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'cache.json'))
  calls = []
  monkeypatch.setattr(autotune, 'measure', _fake_measure(calls))
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 12))
  variables = _TwoLayers().init(jax.random.key(1), x)
  plan = autotune.tune_model(_TwoLayers().apply, variables, x)
  assert len(plan.choices) == len(calls) == 2
  assert set(plan.choices.values()) == {('taps+matmul', 'dense', 'shifts')}
  with autotune.installed(plan):
    y = jax.jit(_TwoLayers().apply)(variables, x)
  reference = _TwoLayers(implementation='dense').apply(variables, x)
  assert _relative(y, reference) < 1e-5


def test_the_cost_rule_follows_the_cpu_measurements():
  def rule(m, n, g, p, taps='cross', stride=1, platform='cpu'):
    layout = layout_lib.layout(structure.ssc_structure(m, n, 3 if g else 1, g, p, taps))
    key = autotune.LayerKey(platform, platform, 1, 64, (16, 16), m, n, (3, 3) if g else (1, 1),
                            (stride, stride), ((1, 1), (1, 1)), g, p, taps, 'float32')
    return tuple(autotune.rule(key, layout))
  assert rule(64, 256, None, 4) == ('grouped+matmul',) * 3
  assert rule(32, 32, 2, 2) == ('dense',) * 3  # nothing to gain at 32 channels, two groups
  assert rule(64, 64, 4, 4, platform='gpu') == ('dense',) * 3
  assert rule(128, 128, 1, 2) == ('taps',) * 3 and rule(32, 32, 1, 2) == ('split',) * 3
  assert rule(64, 64, 1, 2, taps='full') == ('dense',) * 3
  assert rule(64, 64, 4, 4) == ('sliced',) * 3 and rule(64, 64, 6, 3) == ('sliced',) * 3
  assert rule(128, 128, 15, 4) == ('sliced',) * 3  # a coarser slicing from g = 16 on
  assert rule(128, 128, 16, 4) == ('sliced8',) * 3 and rule(128, 128, 64, 4) == ('sliced8',) * 3
  assert rule(128, 128, 19, 4) == ('sliced',) * 3  # no divisor of 19 to slice by
  assert rule(32, 64, 4, 4, stride=2) == ('shifts', 'shifts', 'sliced')


def test_the_rule_names_valid_lowerings():
  """Each name the rule gives is one the tuner times for that layer (so measurements can
  price it: benchmarks/cost_rule.py), on every case and on a strided 1x1 layer with groups."""
  for case in CASES + [(48, 48, 1, 2, 4, 2, 'full')]:
    module, variables, x = _layer(case)
    for key, layout, _ in autotune.layers_of(module.apply, variables, x).values():
      for name in autotune.rule(key, layout):
        lowerings.check(name, layout)
        assert name in lowerings.candidates(layout), (case, name)


def _digits(**overrides):
  config = config_lib.load_config_module('configs/default.py').get_config()
  config.log_every_steps = 5
  config.update(overrides)
  return config


def _plan_label(plan, backward):
  """Which option of the whole-network checks a plan of the fake timings below is."""
  choices = set(plan.choices.values())
  forwards = {c.forward for c in choices}
  if choices == {('dense',) * 3}:
    return 'dense'
  if forwards in ({'dense'}, {'split'}):
    return 'changed' if backward else forwards.pop()
  return 'tuned'


@pytest.mark.parametrize('winners', [
    pytest.param(('dense', 'dense'), marks=pytest.mark.slow), ('split', 'changed'),
    pytest.param(('split', 'tuned'), marks=pytest.mark.slow),
    pytest.param(('tuned', 'tuned'), marks=pytest.mark.slow)])
def test_whole_network_checks_choose_inference_and_training_lowerings(tmp_path, monkeypatch,
                                                                      winners):
  """The per-layer winners are timed together in the model, at the per-device batch: the
  inference forward pass against 'dense' and 'split' on every layer (its winner serves the
  eval step), then the forward and backward pass against 'dense' everywhere and, if the
  inference winner differs, the per-layer winners with its forward passes; the fastest stays,
  and a later run with the same cache file reads the verdict instead of timing again."""
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'cache.json'))
  monkeypatch.setattr(autotune, 'measure', _fake_measure([]))
  timed = []

  def pass_ms(model, variables, x, plan, backward):
    timed.append((_plan_label(plan, backward), x.shape, backward))
    assert model.apply(variables, x, train=False).shape == (x.shape[0], 10)  # they fit
    return 1.0 if timed[-1][0] == winners[backward] else 2.0

  monkeypatch.setattr(tuning, '_pass_score', pass_ms)
  config = _digits(autotune=True, batch_size=8, eval_batch_size=16)
  model = models.create_model(config.model, 10)
  plan = tuning.decide_plan(model, config, (8, 8, 1))
  per_device = (8 // jax.device_count(), 8, 8, 1)
  assert {t[1] for t in timed} == {per_device}
  forward = [('tuned', False), ('dense', False), ('split', False)]
  changed_inference = winners[0] != 'tuned'
  backward = [('tuned', True), ('dense', True)] + changed_inference * [('changed', True)]
  assert [(t[0], t[2]) for t in timed] == forward + backward
  again = tuning.decide_plan(model, config, (8, 8, 1))  # a warm cache holds the verdict too
  assert again == plan and len(timed) == len(forward + backward)
  tuned = autotune.Choice('taps+matmul', 'dense', 'shifts')  # the fake timings' winners
  inference = tuned.forward if winners[0] == 'tuned' else winners[0]
  assert plan.inference and all('|b16|' in k for k in plan.inference)  # the eval step's layers
  assert inference in set(plan.inference.values())
  assert len(plan.inference) == len(plan.choices) and all('|b8|' in k for k in plan.choices)
  values = set(plan.choices.values())
  if winners[1] == 'dense':
    assert values == {('dense',) * 3}
  else:
    assert {c[1:] for c in values} == {tuned[1:]}
    changed = winners[1] == 'changed'
    same = {c.forward for c in values} == set(plan.inference.values())
    assert same == (changed or not changed_inference)


def test_the_eval_step_runs_the_plans_inference_lowerings(monkeypatch):
  """Inside `autotune.inference()` (the eval step), a layer takes the plan's inference
  lowering; elsewhere (the train step), its training choice."""
  config = _digits(batch_size=4, eval_batch_size=4)
  model = models.create_model(config.model, 10)
  train_layers, eval_layers = tuning._layers(model, config, (8, 8, 1))
  assert set(train_layers) == set(eval_layers)
  plan = autotune.Plan({k: autotune.Choice('dense', 'dense', 'dense') for k in train_layers},
                       inference={k: 'shifts' for k in eval_layers})
  assert autotune.Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
  ran = []
  run = lowerings.run
  monkeypatch.setattr(lowerings, 'run',
                      lambda name, *args, **kw: ran.append(name) or run(name, *args, **kw))
  tx = optim.create_optimizer(config, steps_per_epoch=10)
  mesh = sharding.create_mesh()
  state = train.create_train_state(model, tx, (8, 8, 1), jax.random.key(0), mesh)
  train_step, eval_step = train.jit_steps(config, model, tx, mesh)
  batch = {'image': jax.random.normal(jax.random.key(1), (4, 8, 8, 1)),
           'label': jnp.arange(4) % 10, 'mask': jnp.ones((4,), bool)}
  ran.clear()  # the init's
  with autotune.installed(plan):  # traced, not compiled: the lowerings are chosen at tracing
    eval_step.trace(state, batch)
    assert ran and set(ran) == {'shifts'}
    ran.clear()
    train_step.trace(state, batch)
    assert ran and set(ran) == {'dense'}


def test_a_resumed_run_compiles_the_plan_of_the_run_it_resumes(tmp_path, monkeypatch):
  """The plan is chosen once (here by fake timings that pick one lowering per pass), kept in
  the workdir, and read back on resume even when the cache says otherwise: bit-equal."""
  monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / 'cache.json'))
  calls = []
  monkeypatch.setattr(autotune, 'measure', _fake_measure(calls))
  monkeypatch.setattr(tuning, '_pass_score', lambda *args: 2.0 if args[3].force else 1.0)
  straight = train.train_and_evaluate(_digits(autotune=True, num_train_steps=6),
                                      str(tmp_path / 'straight'))
  plan = json.loads((tmp_path / 'straight' / tuning.PLAN_FILE).read_text())
  assert calls and all(c[0] in ('taps', 'taps+matmul') and c[1:] == ['dense', 'shifts']
                       for c in plan['choices'].values())
  train.train_and_evaluate(_digits(autotune=True, num_train_steps=3), str(tmp_path / 'resumed'))
  (tmp_path / 'cache.json').write_text(json.dumps({'format': 1, 'entries': {
      k: {'choice': ['dense'] * 3, 'ms': {}} for k in plan['choices']}}))
  autotune.Cache.default()._entries = None  # pylint: disable=protected-access
  monkeypatch.setattr(autotune, 'measure', lambda *a, **k: pytest.fail('re-measured'))
  resumed = train.train_and_evaluate(_digits(autotune=True, num_train_steps=6),
                                     str(tmp_path / 'resumed'))
  assert json.loads((tmp_path / 'resumed' / tuning.PLAN_FILE).read_text()) == plan
  assert resumed['test_loss'] == straight['test_loss']
  assert resumed['test_accuracy'] == straight['test_accuracy']


@pytest.mark.parametrize('m,n,g,expected', [
    (512, 512, 16, 'grouped4'), (256, 256, 4, 'grouped2'), (512, 256, 8, 'grouped2'),
    (128, 128, 15, None), (256, 256, 2, None), (64, 64, 4, None), (512, 512, 1, None)])
def test_lane_packing_fills_128_channel_blocks(m, n, g, expected):
  layout = layout_lib.layout(structure.ssc_structure(m, n, 3, g, 2, "cross"))
  assert lowerings.lane_packing(layout) == expected
  tpu, cpu = lowerings.candidates(layout, 'tpu'), lowerings.candidates(layout)
  assert set(tpu) - set(cpu) <= {expected, f'{expected}+matmul'}
  assert expected is None or {expected, f'{expected}+matmul'} <= set(tpu)


def test_a_jitted_conv_relu_ssc_relu_pool_program_matches_its_ops_run_one_by_one():
  """A 3x3 convolution and ReLU, an SSC layer and ReLU, a 2x2 max pool, jitted as one
  program, against the same ops run one by one: XLA:CPU's YNNPACK fusion computed this
  73% off in jaxlib 0.10.2 with the layer on 'split' (a 1x3 and a dilated 2x1
  convolution, summed), until `ssc_jax.xla_flags` turned it off."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
  stem = jnp.asarray(rng.standard_normal((3, 3, 3, 64)) * 0.2, jnp.float32)
  layer = SSCConv(features=64, kernel_size=(3, 3), g=1, p=1, taps='cross', padding='SAME')
  stem_conv = lambda x: lax.conv_general_dilated(x, stem, (1, 1), 'SAME',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  with autotune.installed(autotune.Plan(force='dense')):
    variables = perturbed_variables(layer, stem_conv(x), seed=1)

  for lowering in ('dense', 'split'):

    def network(x):  # a new function for each lowering: jax.jit caches traces by function
      h = layer.apply(variables, jax.nn.relu(stem_conv(x)))
      return nn.max_pool(jax.nn.relu(h), (2, 2), (2, 2))

    with autotune.installed(autotune.Plan(force=lowering)):
      one_by_one, jitted = np.asarray(network(x)), np.asarray(jax.jit(network)(x))
    np.testing.assert_allclose(jitted, one_by_one, rtol=1e-4,
                               atol=1e-4 * np.abs(one_by_one).max(), err_msg=lowering)


@pytest.mark.parametrize('jaxlib,preset,expected', [
    ('0.10.2', '', '--xla_cpu_experimental_ynn_fusion_type='),
    ('0.10.2', '--xla_force_host_platform_device_count=2',
     '--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type='),
    ('0.10.2', '--xla_cpu_experimental_ynn_fusion_type=dot',
     '--xla_cpu_experimental_ynn_fusion_type=dot'),
    ('0.12.0', '', ''),
    ('0.9.1', '', '')])
def test_ynn_fusions_are_turned_off_only_where_needed_and_not_set(jaxlib, preset, expected,
                                                                   monkeypatch):
  from ssc_jax import xla_flags  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('XLA_FLAGS', preset)
  monkeypatch.setattr(xla_flags.importlib.metadata, 'version', lambda package: jaxlib)
  xla_flags.without_ynn_fusions()
  assert xla_flags.os.environ['XLA_FLAGS'] == expected
