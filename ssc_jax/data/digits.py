"""`digits`: scikit-learn's bundled 8x8 handwritten digits as a TFDS dataset.

1,797 images of shape (8, 8, 1); pixel values 0..16 are scaled to 0..255
(`round(v * 255 / 16)`). Split: a fixed permutation (numpy RandomState(0)) of
the 1,797 examples; its first 1,500 are `train`, the last 297 `test`, stored
in that order (TFDS shuffling disabled). Builds offline; `load_split` gives
the same splits in the same order without TensorFlow.
"""

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1500
NUM_TEST = 297
_SPLIT_SEED = 0


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, 8, 8, 1), labels int32 (N,)) of 'train' or 'test'."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  order = np.random.RandomState(_SPLIT_SEED).permutation(len(labels))
  if split == 'train':
    index = order[:NUM_TRAIN]
  elif split == 'test':
    index = order[NUM_TRAIN:]
  else:
    raise ValueError(f"digits has splits 'train' and 'test', not {split!r}.")
  return images[index], labels[index]


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits (UCI optical recognition test set), 10 classes."""

  # TFDS finds a builder's code via `importlib_resources` (a backport it does
  # not install on Python >= 3.9) unless the path is given.
  code_path = tfds.core.utils.classproperty(
      classmethod(lambda cls: epath.Path(__file__)))

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in ('train', 'test')}

  def _generate_examples(self, split):
    images, labels = load_split(split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}
