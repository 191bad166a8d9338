"""Does XLA recompute a residual stream inside the fusions that transpose it?

    python benchmarks/residual_recompute.py [--blocks=5] [--batch=64] [--size=32]
        [--channels=32] [--repeats=5]

A plain-JAX model, with nothing from ssc_jax in it: residual blocks of two 3x3
convolutions with training-mode batch norm and ReLU, and the gradient of a
loss with respect to the weights. It is compiled three ways:

* 'plain': as written;
* 'barrier': `lax.optimization_barrier` on each block's input;
* 'divide': each block's input divided by a runtime 1.0, an op that XLA does
  not duplicate into several consumers.

For each, a markdown row gives the median ms of the gradient (warm-up
excluded), the count of transpose fusions and of optimization barriers in
the optimized HLO, and the HLO ops of the largest transpose fusion. On
XLA:CPU (jax 0.10.2, 2026-11-27) the weight gradients' transposes recompute
the block outputs through the batch norms, ReLUs and residual adds of
earlier blocks, and the barriers are gone before fusion.
"""

import argparse
import datetime
import platform
import re
import statistics
import time
from typing import List

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MODES = ('plain', 'barrier', 'divide')


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def batch_norm(y):
  mean = y.mean((0, 1, 2))
  return (y - mean) * lax.rsqrt(((y - mean) ** 2).mean((0, 1, 2)) + 1e-5)


def loss(weights, x, one, mode):
  """Sum of squares of the last block's output; `one` (1.0) feeds the 'divide' mode."""
  for first, second in zip(weights[::2], weights[1::2]):
    if mode == 'barrier':
      x = lax.optimization_barrier(x)
    elif mode == 'divide':
      x = x / one
    h = jax.nn.relu(batch_norm(conv(x, first)))
    x = jax.nn.relu(batch_norm(conv(h, second)) + x)
  return jnp.sum(x ** 2)


def transpose_fusion_sizes(hlo: str) -> List[int]:
  """The HLO ops of the fused computation that each transpose fusion calls."""
  sizes = {m.group(1): m.group(2).count('\n') + 1
           for m in re.finditer(r'\n%([\w.\-]+) \([^\n]*\{\n(.*?)\n\}', hlo, re.S)}
  called = re.findall(r'%transpose[\w.\-]*fusion[\w.\-]* = [^\n]*?calls=%([\w.\-]+)', hlo)
  return [sizes.get(name, 0) for name in called]


def median_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--blocks', type=int, default=5)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--size', type=int, default=32)
  parser.add_argument('--channels', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  c = args.channels
  x = jnp.asarray(rng.normal(size=(args.batch, args.size, args.size, c)), jnp.float32)
  weights = [jnp.asarray(rng.normal(size=(3, 3, c, c)) * 0.1, jnp.float32)
             for _ in range(2 * args.blocks)]
  one = jnp.float32(1.0)
  device = jax.devices()[0]
  print(f'# residual recompute, {datetime.date.today()}: {platform.node()}, jax {jax.__version__}, '
        f'{device.platform} {device.device_kind}; {args.blocks} blocks, batch {args.batch}, '
        f'{args.size}x{args.size}, {c} channels, float32, median of {args.repeats}\n\n'
        '| mode | gradient ms | transpose fusions | barriers after optimisation | '
        'ops in the largest transpose fusion |\n|---|---:|---:|---:|---:|')
  for mode in MODES:
    grad = jax.jit(jax.grad(lambda w, x, one, mode=mode: loss(w, x, one, mode)))
    compiled = grad.lower(weights, x, one).compile()
    hlo = compiled.as_text()
    sizes = transpose_fusion_sizes(hlo)
    print(f'| {mode} | {median_ms(compiled, (weights, x, one), args.repeats):.1f} | {len(sizes)} | '
          f'{hlo.count("opt-barrier(")} | {max(sizes, default=0)} |')


if __name__ == '__main__':
  main()
