"""Tiny-ImageNet, ResNet-32 (doubled width), 85% pruning (supplementary 1.3).

g = [1, 2, 11], p = [1, 4, 10] on the layers with [32, 64, 128] filters.
Kept: 23.96% of the conv + Dense weights (`python -m ssc_jax.budget`),
against the stated 15% ticket; add --config.model.ticket=0.15 to train
at exactly the stated fraction with solved (g, p).
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_resnet32_85.py --workdir=/tmp/tinyimagenet_resnet32_85
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('resnet32')
  config.model.g = (1, 2, 11)
  config.model.p = (1, 4, 10)
  return config
