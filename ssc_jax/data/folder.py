"""The image-folder layout `<root>/<split>/<class>/<image>`, read with Pillow.

Classes are the sorted sub-directory names of `<root>/train` (label = rank),
files within a class are sorted by name. The held-out validation set is the
LAST `round(validation_fraction * n_c)` files of every class `c` in that order
(so it covers all classes in proportion); training uses the rest. In the
"ordered list" of a split, examples are sorted by (class, file name).
"""

import concurrent.futures
import dataclasses
import io
import os

import numpy as np
from PIL import Image

from ssc_jax.data import errors
from ssc_jax.data import specs

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


@dataclasses.dataclass(frozen=True)
class FileList:
  """Paths and labels of one split, in (class, file name) order."""
  paths: tuple[str, ...]
  labels: np.ndarray  # int32
  class_names: tuple[str, ...]

  def __len__(self):
    return len(self.paths)

  def take(self, index) -> 'FileList':
    index = np.asarray(index, dtype=np.int64)
    return FileList(tuple(self.paths[i] for i in index), self.labels[index],
                    self.class_names)


def class_names(root: str) -> tuple[str, ...]:
  train = os.path.join(root, 'train')
  return tuple(sorted(e.name for e in os.scandir(train) if e.is_dir()))


def list_split(root: str, split: str) -> FileList:
  """Lists `<root>/<split>/<class>/*` with labels from the train classes."""
  names = class_names(root)
  paths, labels = [], []
  for label, name in enumerate(names):
    class_dir = os.path.join(root, split, name)
    if not os.path.isdir(class_dir):
      continue
    files = sorted(e.name for e in os.scandir(class_dir)
                   if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    paths.extend(os.path.join(class_dir, f) for f in files)
    labels.extend([label] * len(files))
  return FileList(tuple(paths), np.asarray(labels, np.int32), names)


def class_sizes(files: FileList) -> list[int]:
  return np.bincount(files.labels, minlength=len(files.class_names)).tolist()


def held_out_mask(files: FileList, fraction: float) -> np.ndarray:
  """True for the last round(fraction * n_c) files of every class."""
  mask = np.zeros(len(files), bool)
  start = 0
  for size in class_sizes(files):
    k = specs.num_held_out(size, fraction)
    mask[start + size - k:start + size] = True
    start += size
  return mask


def decode(path: str, data: bytes | None = None, channels: int = 3) -> np.ndarray:
  """Decodes one image to uint8 (H, W, channels); errors name the file."""
  try:
    with Image.open(io.BytesIO(data) if data is not None else path) as img:
      img = img.convert('RGB' if channels == 3 else 'L')
      array = np.asarray(img, dtype=np.uint8)
  except Exception as e:  # Pillow raises several types for corrupt files.
    raise errors.UnreadableImageError(
        f'Cannot decode image file {path!r}: {e}') from e
  return array.reshape(array.shape[:2] + (channels,))


def load_images(paths, shape: tuple[int, int, int],
                num_threads: int | None = None) -> np.ndarray:
  """Decodes `paths` into one uint8 array (N, *shape); all must have `shape`."""
  out = np.empty((len(paths),) + tuple(shape), np.uint8)

  def load(i):
    image = decode(paths[i], channels=shape[-1])
    if image.shape != tuple(shape):
      raise errors.UnreadableImageError(
          f'Image file {paths[i]!r} has shape {image.shape}, expected {shape}.')
    out[i] = image

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    list(pool.map(load, range(len(paths)), chunksize=256))
  return out
