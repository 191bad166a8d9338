"""Tiny-ImageNet, VGG-19, 90% pruning (supplementary 1.3).

g = [1, 1, 2, 10], p = [1, 2, 2, 15] on the layers with [64, 128, 256, 512] filters.
Kept: 16.59% of the conv + Dense weights (`python -m ssc_jax.budget`),
against the stated 10% ticket; add --config.model.ticket=0.10 to train
at exactly the stated fraction with solved (g, p).
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_vgg19_90.py --workdir=/tmp/tinyimagenet_vgg19_90
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('vgg19')
  config.model.g = (1, 1, 2, 10)
  config.model.p = (1, 2, 2, 15)
  return config
