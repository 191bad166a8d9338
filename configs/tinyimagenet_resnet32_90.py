"""Tiny-ImageNet, ResNet-32 (doubled width), 90% pruning (supplementary 1.3).

g = [2, 4, 16], p = [2, 4, 8] on the layers with [32, 64, 128] filters.
Kept: 15.21% of the conv + Dense weights (`python -m ssc_jax.budget`),
against the stated 10% ticket; add --config.model.ticket=0.10 to train
at exactly the stated fraction with solved (g, p).
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_resnet32_90.py --workdir=/tmp/tinyimagenet_resnet32_90
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('resnet32')
  config.model.g = (2, 4, 16)
  config.model.p = (2, 4, 8)
  return config
