"""Augmentation and normalisation of uint8 image batches, in JAX.

Random choices are drawn for the whole GLOBAL batch from one key
(`random_params`), and a shard of the batch applies its slice of them, so the
result does not depend on how the batch is sharded.
"""

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 -> float32 (x / 255 - mean) / std per channel."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def random_params(key: jax.Array, batch: int, info) -> dict[str, jax.Array]:
  """Per-example crop offsets (dy, dx in [0, 2 * padding]) and flip bits."""
  if info.augment == 'none':
    return {}
  if info.augment != 'crop_flip':
    raise ValueError(f'Augmentation {info.augment!r} has no device version.')
  key_y, key_x, key_flip = jax.random.split(key, 3)
  span = 2 * info.crop_padding + 1
  return {'dy': jax.random.randint(key_y, (batch,), 0, span),
          'dx': jax.random.randint(key_x, (batch,), 0, span),
          'flip': jax.random.bernoulli(key_flip, 0.5, (batch,))}


def crop_flip(images, dy, dx, flip, padding: int) -> jax.Array:
  """Crops at (dy, dx) of the `padding`-px zero-padded images, then flips."""
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))
  crop = jax.vmap(lambda img, y, x: jax.lax.dynamic_slice(
      img, (y, x, 0), (height, width, channels)))
  out = crop(padded, dy, dx)
  return jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)


def train_transform(images, params, info) -> jax.Array:
  """The train augmentation of `info` with `random_params`, then normalise."""
  if params:
    images = crop_flip(images, params['dy'], params['dx'], params['flip'],
                       info.crop_padding)
  return normalize(images, info.mean, info.std)
