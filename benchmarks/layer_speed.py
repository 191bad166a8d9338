"""SSCConv speed per implementation against a dense convolution.

Prints forward and forward+backward milliseconds (median of repeats, warm-up
and compilation excluded) for layer shapes of the paper's CIFAR networks:

    python benchmarks/layer_speed.py [--batch 128] [--repeats 10]
"""

import argparse
import datetime
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssc_jax import SSCConv

# (M = N, spatial size, g, p): layers of cifar10_resnet32_10 / cifar10_vgg19_10 and a 64-group one.
SHAPES = [(32, 32, 2, 2), (64, 16, 4, 4), (128, 8, 15, 4), (256, 8, 4, 2), (512, 4, 16, 2),
          (512, 4, 64, 25)]
IMPLEMENTATIONS = ('grouped', 'taps', 'dense')


def median_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def time_layer(module, x, repeats):
  variables = module.init(jax.random.key(1), x)
  forward = jax.jit(module.apply)
  backward = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(v, x) ** 2), argnums=(0, 1)))
  return median_ms(forward, (variables, x), repeats), median_ms(backward, (variables, x), repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f'# {datetime.date.today()} {platform.node()} jax {jax.__version__} '
        f'{device.platform} {device.device_kind} x{jax.device_count()}, batch {args.batch}, '
        f'median of {args.repeats}')
  print(f'{"M=N":>5} {"HxW":>6} {"g":>3} {"p":>3} | {"dense conv":>17} | '
        + ' | '.join(f'{name:>17}' for name in IMPLEMENTATIONS) + ' |  auto')
  print(f'{"":>5} {"":>6} {"":>3} {"":>3} | {"fwd / fwd+bwd ms":>17} |')
  for channels, size, g, p in SHAPES:
    x = jax.random.normal(jax.random.key(0), (args.batch, size, size, channels))
    dense = time_layer(SSCConv(channels, 3, g=1, use_bias=False), x, args.repeats)
    cells = []
    for implementation in IMPLEMENTATIONS:
      module = SSCConv(channels, 3, g=g, p=p, use_bias=False, implementation=implementation)
      cells.append('{:7.1f} / {:7.1f}'.format(*time_layer(module, x, args.repeats)))
    auto = SSCConv(channels, 3, g=g, p=p)._implementation(  # pylint: disable=protected-access
        SSCConv(channels, 3, g=g, p=p).structure(channels))
    print(f'{channels:>5} {size:>3}x{size:<2} {g:>3} {p:>3} | {dense[0]:7.1f} / {dense[1]:7.1f} | '
          + ' | '.join(cells) + f' | {auto}')


if __name__ == '__main__':
  main()
