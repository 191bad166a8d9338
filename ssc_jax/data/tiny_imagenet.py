"""`tiny_imagenet`: Tiny-ImageNet-200 as a TFDS dataset, from the official zip.

Place `tiny-imagenet-200.zip` (http://cs231n.stanford.edu/tiny-imagenet-200.zip)
in TFDS's manual directory (`<data_dir>/downloads/manual/`). Labels are the
ranks of the sorted wnids of `wnids.txt`. Splits: `train` (100,000 images,
500 per class, from `train/<wnid>/images/`) and `test` = the official labelled
`val` set (10,000 images, labels from `val/val_annotations.txt`). Images are
64x64 RGB; the few grayscale JPEGs are converted to RGB. Examples are stored
in a fixed order (TFDS shuffling disabled): train interleaves the classes
(the k-th file of every class, classes in label order, then the (k+1)-th...),
so the last 10% held out as validation is the last 50 files of each class;
test is sorted by file name. `iter_split` reads the zip in that order without
TensorFlow (the device-resident pipeline uses it).
"""

import io
import os
import zipfile

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

ZIP_NAME = 'tiny-imagenet-200.zip'
_ROOT = 'tiny-imagenet-200'


def wnids(archive: zipfile.ZipFile) -> list[str]:
  text = archive.read(f'{_ROOT}/wnids.txt').decode()
  return sorted(line.strip() for line in text.splitlines() if line.strip())


def iter_split(zip_path: str, split: str):
  """Yields (file name, JPEG bytes, label) of 'train' or 'test' in file order."""
  with zipfile.ZipFile(zip_path) as archive:
    label_of = {w: i for i, w in enumerate(wnids(archive))}
    if split == 'train':
      by_class = {w: [] for w in label_of}
      for name in sorted(archive.namelist()):
        parts = name.split('/')
        if (len(parts) == 5 and parts[1] == 'train' and parts[3] == 'images'
            and name.lower().endswith('.jpeg')):
          by_class[parts[2]].append(name)
      order = sorted((rank, label_of[w], name)
                     for w, names in by_class.items()
                     for rank, name in enumerate(names))
      for _, label, name in order:
        yield name, archive.read(name), label
    elif split == 'test':
      text = archive.read(f'{_ROOT}/val/val_annotations.txt').decode()
      rows = sorted(line.split('\t')[:2] for line in text.splitlines()
                    if line.strip())
      for file_name, wnid in rows:
        name = f'{_ROOT}/val/images/{file_name}'
        yield name, archive.read(name), label_of[wnid]
    else:
      raise ValueError(
          f"tiny_imagenet has splits 'train' and 'test', not {split!r}.")


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """Tiny-ImageNet-200: 200 ImageNet classes at 64x64."""

  # TFDS finds a builder's code via `importlib_resources` (a backport it does
  # not install on Python >= 3.9) unless the path is given.
  code_path = tfds.core.utils.classproperty(
      classmethod(lambda cls: epath.Path(__file__)))

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Download {ZIP_NAME} from http://cs231n.stanford.edu/{ZIP_NAME} and '
      'place it in the manual directory (<data_dir>/downloads/manual/).')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(64, 64, 3),
                                         encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(num_classes=200),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='http://cs231n.stanford.edu/',
    )

  def _split_generators(self, dl_manager):
    zip_path = os.path.join(dl_manager.manual_dir, ZIP_NAME)
    if not os.path.exists(zip_path):
      raise FileNotFoundError(
          f'{zip_path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    with zipfile.ZipFile(zip_path) as archive:
      self.info.features['label'].names = wnids(archive)
    return {split: self._generate_examples(zip_path, split)
            for split in ('train', 'test')}

  def _generate_examples(self, zip_path, split):
    for name, data, label in iter_split(zip_path, split):
      with Image.open(io.BytesIO(data)) as img:
        image = data if img.mode == 'RGB' else np.asarray(img.convert('RGB'))
      yield name, {'image': image, 'label': label,
                   'file_name': os.path.basename(name)}
