"""SSC layer speed: every distinct SSC layer shape of the seed configs against a dense conv.

    python benchmarks/layer_speed.py [--configs=cifar10_resnet32_10,imagenet_r50_40]
        [--batch=N] [--dtype=float32|bfloat16] [--repeats=10] [--lowerings=all|auto|NAMES]
        [--out=FILE]

For each distinct SSC layer (channels, kernel, strides, input size, g, p,
taps) of the named configs at their batch size (or --batch) and dataset
input size: the dense KxK convolution of the same shape (`lax.conv`), each
lowering of `ssc_jax.ssc.lowerings.candidates` (--lowerings=all, or a comma
list of names; those a layer cannot run are left out), and 'auto', the autotuner's per-pass choice
(`ssc_jax.ssc.autotune.tune`, cached in its cache file), each as forward and
forward+backward milliseconds (median of --repeats, warm-up and compilation
excluded), with the layer's MAC fraction (its ideal time ratio). Each is
timed on one device at the per-device batch (the batch over the device
count), as a training run's tuner times it, so the cache entries it writes
are the ones training reads. Prints a markdown table headed by the machine,
card, versions and date. A dense layer of a config (one that keeps every
weight) is not an SSC layer and is skipped.
"""

import argparse
import datetime
import platform

import jax
import jax.numpy as jnp
from jax import lax

from network_speed import emit
from ssc_jax import budget
from ssc_jax import config_lib
from ssc_jax import models
from ssc_jax.ssc import autotune
from ssc_jax.ssc import lowerings

SEED_CONFIGS = sorted(p.stem for p in budget.CONFIG_DIR.glob('*.py')
                      if p.stem != 'default' and not p.stem.endswith('_dense'))


def config_layers(name: str, batch: int, dtype: str):
  """{key id: (key, layout, geometry)} of the SSC layers of one config's train step."""
  config = config_lib.load_config_module(budget.CONFIG_DIR / f'{name}.py').get_config()
  if dtype:
    config.model.dtype = dtype
  num_classes, image_shape = budget.dataset_facts(config.dataset)
  model = models.create_model(budget.resolve_ticket(config.model, num_classes, image_shape[-1]),
                              num_classes)
  x = jax.ShapeDtypeStruct((batch or config.batch_size,) + image_shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  layers = autotune.layers_of(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), variables, x)
  return {k: v for k, v in layers.items()
          if v[1].structure.num_weights < v[1].structure.num_dense_weights}


def per_device(key: autotune.LayerKey) -> int:
  """The batch one device runs in a data-parallel step of the key's batch."""
  return max(1, key.batch // jax.device_count())


def time_fn(fn, key: autotune.LayerKey, layout, geometry, repeats: int):
  """(forward ms, forward+backward ms) of fn(x, kernel, mix) on random inputs."""
  x, kernel, mix, dy = autotune.inputs(layout, geometry, per_device(key), key.dtype)
  return (autotune.median_ms(jax.jit(fn), (x, kernel, mix), repeats),
          autotune.median_ms(jax.jit(autotune.training_step(fn)), (x, kernel, mix, dy), repeats))


def runs(name: str, layout) -> bool:
  """Whether the layer can run lowering `name` (a named G must divide its g)."""
  try:
    lowerings.check(name, layout)
  except ValueError:
    return False
  return True


def dense_conv_ms(key: autotune.LayerKey, geometry, repeats: int):
  """(forward, forward+backward) ms of the dense convolution of the layer's shape."""
  kernel = jax.random.normal(jax.random.key(1), key.kernel_size + (key.in_features, key.features),
                             key.dtype)

  def conv(x, k, _):
    return lax.conv_general_dilated(x, k, geometry.strides, geometry.pads,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  batch = per_device(key)
  x = jax.random.normal(jax.random.key(0), (batch,) + geometry.input_size + (key.in_features,),
                        key.dtype)
  dy = jax.random.normal(jax.random.key(2), (batch,) + geometry.output_size + (key.features,),
                         key.dtype)
  return (autotune.median_ms(jax.jit(conv), (x, kernel, None), repeats),
          autotune.median_ms(jax.jit(autotune.training_step(conv)), (x, kernel, None, dy),
                             repeats))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(SEED_CONFIGS))
  parser.add_argument('--batch', type=int, default=0, help='0: each config\'s batch size')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--lowerings', default='all',
                      help="'all' candidates, 'auto' (only the tuned choice) or a comma list")
  parser.add_argument('--out', default=None, help='also write the table to this file')
  args = parser.parse_args()
  if args.lowerings not in ('all', 'auto'):
    unknown = [n for n in args.lowerings.split(',') if not lowerings.is_name(n)]
    if unknown:
      parser.error(f'--lowerings: {", ".join(map(repr, unknown))} not a lowering; each must be '
                   f'{lowerings.NAMES}')
  layers = {}
  for name in args.configs.split(','):
    for key_id, value in config_layers(name, args.batch, args.dtype).items():
      layers.setdefault(key_id, value + (name,))
  device = jax.devices()[0]
  lines = [f'# layer speed, {datetime.date.today()}: {platform.node()}, jax {jax.__version__}, '
           f'{device.platform} {device.device_kind} x{jax.device_count()}, {args.dtype}, '
           f'median of {args.repeats}; fwd / fwd+bwd ms; {len(layers)} layer shapes of '
           f'{args.configs}', '',
           '| first config | batch per device | HxW | M->N | stride | g | p | taps '
           '| MAC fraction | dense conv | lowering: fwd / fwd+bwd ms | auto (fwd, dx, dw) | auto / dense, fwd+bwd |',
           '|---|---:|---|---|---:|---:|---:|---|---:|---:|---|---|---:|']
  emit('\n'.join(lines), args.out)
  for key_id, (key, layout, geometry, name) in layers.items():
    structure = layout.structure
    dense = dense_conv_ms(key, geometry, args.repeats)
    names = (lowerings.candidates(layout) if args.lowerings == 'all' else
             [] if args.lowerings == 'auto' else
             [n for n in args.lowerings.split(',') if runs(n, layout)])
    cells = []
    for lowering in names:
      fn = lambda x, k, m, lowering=lowering: lowerings.run(lowering, x, k, m, layout, geometry, None)
      cells.append('{}: {:.2f} / {:.2f}'.format(lowering, *time_fn(fn, key, layout, geometry,
                                                                 args.repeats)))
    choice = autotune.tune({key_id: (key, layout, geometry)},
                           batch_divisor=jax.device_count()).choices[key_id]
    auto = time_fn(lambda x, k, m: lowerings.apply(choice, x, k, m, layout, geometry, None),
                   key, layout, geometry, args.repeats)
    row = (f'| {name} | {per_device(key)} | {key.input_size[0]}x{key.input_size[1]} | '
           f'{key.in_features}->{key.features} | {key.strides[0]} | {key.g} | {key.p} | {key.taps} '
           f'| {structure.num_weights / structure.num_dense_weights:.3f} '
           f'| {dense[0]:.2f} / {dense[1]:.2f} | {"<br>".join(cells) or "-"} '
           f'| {auto[0]:.2f} / {auto[1]:.2f} ({", ".join(choice)}) | {auto[1] / dense[1]:.2f}x |')
    emit(row, args.out)
  emit('', args.out)


if __name__ == '__main__':
  main()
