"""Tiny-ImageNet, VGG-19, 95% pruning (supplementary 1.3).

g = [1, 1, 3, 35], p = [1, 2, 4, 35] on the layers with [64, 128, 256, 512] filters.
Kept: 8.19% of the conv + Dense weights (`python -m ssc_jax.budget`),
against the stated 5% ticket; add --config.model.ticket=0.05 to train
at exactly the stated fraction with solved (g, p).
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_vgg19_95.py --workdir=/tmp/tinyimagenet_vgg19_95
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('vgg19')
  config.model.g = (1, 1, 3, 35)
  config.model.p = (1, 2, 4, 35)
  return config
