"""CIFAR-100, VGG-19, 5% winning ticket (supplementary 1.2).

g = [1, 1, 3, 30], p = [1, 2, 4, 30] on the layers with [64, 128, 256, 512] filters.
Kept: 8.42% of the conv + Dense weights (`python -m ssc_jax.budget`),
against the stated 5% ticket; add --config.model.ticket=0.05 to train
at exactly the stated fraction with solved (g, p).
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/cifar100_vgg19_5.py --workdir=/tmp/cifar100_vgg19_5
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar100', 'vgg19')
  config.model.g = (1, 1, 3, 30)
  config.model.p = (1, 2, 4, 30)
  return config
