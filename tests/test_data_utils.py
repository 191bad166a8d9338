"""Shared helpers of the data tests (no tests here)."""

import os
import shutil

import jax
import pytest

from ssc_jax import config_lib
from ssc_jax.data import archive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_ARCHIVE = os.path.join(REPO, '..', 'shared', 'data', 'cifar10-jpeg.tar.xz')
CIFAR_DIR = os.path.join(REPO, '.data', 'cifar10-jpeg')
CIFAR_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                 'frog', 'horse', 'ship', 'truck')


def cifar_jpeg_dir() -> str:
  """The unpacked CIFAR-10 JPEG copy (unpacked once); skips if absent."""
  if not os.path.isdir(CIFAR_DIR) and not os.path.isfile(CIFAR_ARCHIVE):
    pytest.skip(f'{CIFAR_ARCHIVE} not available')
  return archive.unpack_once(CIFAR_ARCHIVE, CIFAR_DIR)


def small_cifar(root, train_per_class: int = 20, test_per_class: int = 10) -> str:
  """Copies the first files of every class of the JPEG copy under `root`."""
  source = cifar_jpeg_dir()
  for split, count in (('train', train_per_class), ('test', test_per_class)):
    for name in CIFAR_CLASSES:
      src = os.path.join(source, split, name)
      dst = os.path.join(root, split, name)
      os.makedirs(dst)
      for f in sorted(os.listdir(src))[:count]:
        shutil.copy(os.path.join(src, f), dst)
  return str(root)


# Python source that makes `import tensorflow` fail as if not installed.
HIDE_TENSORFLOW = '''
import importlib.machinery, sys
class NoTensorFlow(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return None
    return super().find_spec(name, path, target)
sys.meta_path[:] = [NoTensorFlow if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
'''


def config(**overrides):
  c = config_lib.base()
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def mesh():
  return jax.make_mesh((jax.device_count(),), ('data',))


def id_folder(root, train_per_class: int = 20, test_per_class: int = 10) -> str:
  """A 'digits'-shaped folder (8x8 gray PNG, 10 classes) whose images carry
  their id: pixel (0, 0) = id // 256, (0, 1) = id % 256, (0, 2) = class.

  Train ids are 0..; test ids start at 10,000.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for split, count, first in (('train', train_per_class, 0),
                              ('test', test_per_class, 10_000)):
    for label in range(10):
      directory = os.path.join(root, split, f'class_{label}')
      os.makedirs(directory)
      for i in range(count):
        image_id = first + label * count + i
        pixels = np.full((8, 8), 128, np.uint8)
        pixels[0, :3] = image_id // 256, image_id % 256, label
        Image.fromarray(pixels).save(os.path.join(directory, f'{i:04d}.png'))
  return str(root)


def ids_of(images, dataset: str = 'digits'):
  """Recovers `id_folder` ids from normalised (non-augmented) images."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ssc_jax.data import specs  # pylint: disable=g-import-not-at-top
  info = specs.info(dataset)
  pixels = np.rint((np.asarray(images) * np.asarray(info.std)
                    + np.asarray(info.mean)) * 255).astype(np.int64)
  return pixels[:, 0, 0, 0] * 256 + pixels[:, 0, 1, 0]
