"""Facts about the supported datasets and the split sizes a config implies."""

import dataclasses

DATASETS = ('cifar10', 'cifar100', 'tiny_imagenet', 'imagenet2012', 'digits')

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts of one dataset.

  Attributes:
    tfds_name: name of the TFDS builder.
    test_split: TFDS split used as the final test set (ImageNet: validation).
    num_classes: number of labels.
    raw_shape: (H, W, C) of the stored images (None: variable, ImageNet).
    input_shape: (H, W, C) the model sees after preprocessing.
    num_train: examples in the official train split.
    num_test: examples in `test_split`.
    mean, std: per-channel normalisation constants on the 0..1 scale.
    augment: 'crop_flip' (pad, random crop, flip), 'inception' (random
      resized crop + flip; eval resize + centre crop) or 'none'.
    crop_padding: zero padding in pixels for 'crop_flip'.
    fits_on_device: whether the device-resident pipeline supports it.
  """
  tfds_name: str
  test_split: str
  num_classes: int
  raw_shape: tuple[int, int, int] | None
  input_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: str
  crop_padding: int = 0
  fits_on_device: bool = True


INFOS = {
    'cifar10': DatasetInfo(
        'cifar10', 'test', 10, (32, 32, 3), (32, 32, 3), 50_000, 10_000,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        augment='crop_flip', crop_padding=4),
    'cifar100': DatasetInfo(
        'cifar100', 'test', 100, (32, 32, 3), (32, 32, 3), 50_000, 10_000,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        augment='crop_flip', crop_padding=4),
    'tiny_imagenet': DatasetInfo(
        'tiny_imagenet', 'test', 200, (64, 64, 3), (64, 64, 3), 100_000,
        10_000, mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),
        augment='crop_flip', crop_padding=4),
    'imagenet2012': DatasetInfo(
        'imagenet2012', 'validation', 1000, None, (224, 224, 3), 1_281_167,
        50_000, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        augment='inception', fits_on_device=False),
    # Statistics of the 1,797 sklearn digits (0..16 scaled to 0..1).
    'digits': DatasetInfo(
        'digits', 'test', 10, (8, 8, 1), (8, 8, 1), 1_500, 297,
        mean=(0.3053,), std=(0.3760,), augment='none'),
}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the trainer needs to know about the configured input."""
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_validation: int
  num_test: int


def info(name: str) -> DatasetInfo:
  if name not in INFOS:
    raise ValueError(
        f'Unknown dataset {name!r}; config.dataset must be one of {DATASETS}.')
  return INFOS[name]


def num_held_out(n: int, fraction: float) -> int:
  """Examples of an `n`-example train set held out as validation."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'validation_fraction must be in [0, 1), got {fraction}.')
  return int(round(n * fraction))
