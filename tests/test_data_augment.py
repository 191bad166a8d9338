"""Augmentation: flip rate, crop offsets, content shifts (JAX and tf.data)."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ssc_jax.data import augment
from ssc_jax.data import specs


def _marker(height=32, width=32, channels=3, y=10, x=5):
  image = np.zeros((height, width, channels), np.uint8)
  image[y, x] = 255
  return image


def _where(images):
  """(y, x) of the marker in every image (via channel 0)."""
  flat = np.asarray(images)[..., 0].reshape(len(images), -1).argmax(axis=1)
  return np.stack(np.unravel_index(flat, np.asarray(images).shape[1:3]), -1)


def test_random_params_rates():
  info = specs.info('cifar10')
  params = augment.random_params(jax.random.key(0), 20_000, info)
  flip = np.asarray(params['flip'])
  assert abs(flip.mean() - 0.5) < 0.02
  for k in ('dy', 'dx'):
    counts = np.bincount(np.asarray(params[k]), minlength=9)
    assert len(counts) == 9 and counts.min() > 20_000 / 9 * 0.85
  assert augment.random_params(jax.random.key(0), 4, specs.info('digits')) == {}


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100', 'tiny_imagenet'])
def test_crop_padding_is_grasps(dataset):
  """GraSP: RandomCrop(32, padding=4) for CIFAR, RandomCrop(64, padding=4) for Tiny-ImageNet:
  offsets 0..8 of the padded image, every one drawn."""
  info = specs.info(dataset)
  assert info.augment == 'crop_flip' and info.crop_padding == 4
  params = augment.random_params(jax.random.key(1), 2_000, info)
  for k in ('dy', 'dx'):
    assert set(np.unique(np.asarray(params[k]))) == set(range(9))


def test_crop_flip_moves_content_by_the_offset():
  images = jnp.asarray(np.stack([_marker()] * 4))
  dy = jnp.array([0, 4, 8, 8])
  dx = jnp.array([0, 4, 8, 0])
  flip = jnp.array([False, False, False, True])
  out = augment.crop_flip(images, dy, dx, flip, padding=4)
  # Crop at (dy, dx) of the padded image moves a pixel by (4 - dy, 4 - dx).
  np.testing.assert_array_equal(
      _where(out), [[14, 9], [10, 5], [6, 1], [6, 31 - 9]])
  corner = np.asarray(out[2])
  assert (corner[-4:] == 0).all() and (corner[:, -4:] == 0).all()  # Zero pad.


def test_tf_crop_flip_statistics():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ssc_jax.data import tfdata  # pylint: disable=g-import-not-at-top
  info = specs.info('tiny_imagenet')  # 4 px padding.
  image = tf.constant(_marker(64, 64, 3, y=20, x=10))
  outs = np.stack([tfdata._crop_flip(image, tf.constant([1, s], tf.int64),
                                     info).numpy() for s in range(400)])
  assert outs.shape == (400, 64, 64, 3)
  y, x = _where(outs).T
  flipped = x > 31
  assert 0.4 < flipped.mean() < 0.6
  x = np.where(flipped, 63 - x, x)
  assert np.abs(y - 20).max() == 4 and np.abs(x - 10).max() == 4
  assert len(np.unique(y)) == 9
  again = tfdata._crop_flip(image, tf.constant([1, 3], tf.int64), info).numpy()
  np.testing.assert_array_equal(again, outs[3])


def test_tf_imagenet_crops():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ssc_jax.data import tfdata  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (300, 400, 3), np.uint8)).save(
      buffer, 'JPEG')
  encoded = tf.constant(buffer.getvalue())
  crops = [tfdata._inception_crop(encoded, tf.constant([0, s], tf.int64), 224)
           for s in range(8)]
  assert all(c.shape == (224, 224, 3) for c in crops)
  assert len({float(tf.reduce_mean(c)) for c in crops}) > 1
  centre = tfdata._resize_centre_crop(encoded, 256, 224)
  assert centre.shape == (224, 224, 3)


def test_tf_imagenet_crop_falls_back_to_the_centre_crop():
  """A 16 x 320 image has no window of area >= 8% with aspect in [3/4, 4/3]: after its
  attempts the random-resized crop takes the eval centre crop (possibly flipped), not the
  whole image squashed."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ssc_jax.data import tfdata  # pylint: disable=g-import-not-at-top
  ramp = np.broadcast_to(np.linspace(0, 255, 320)[None, :, None], (16, 320, 3))
  buffer = io.BytesIO()
  Image.fromarray(ramp.astype(np.uint8)).save(buffer, 'JPEG', quality=95)
  encoded = tf.constant(buffer.getvalue())
  centre = tfdata._resize_centre_crop(encoded, tfdata.EVAL_RESIZE, 224).numpy()
  assert abs(centre.mean() - 127.5) < 10 and np.ptp(centre.mean(axis=(0, 2))) < 20
  for s in range(6):
    crop = tfdata._inception_crop(encoded, tf.constant([0, s], tf.int64), 224).numpy()
    assert crop.shape == (224, 224, 3)
    assert (np.array_equal(crop, centre) or np.array_equal(crop, centre[:, ::-1])), s
