"""CIFAR-10, VGG-19, 5% winning ticket (supplementary 1.1).

g = [1, 1, 4, 16], p = [1, 2, 4, 16] on the layers with [64, 128, 256, 512] filters.
Kept: 10.21% of the conv + Dense weights (`python -m ssc_jax.budget`),
against the stated 5% ticket; add --config.model.ticket=0.05 to train
at exactly the stated fraction with solved (g, p).
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/cifar10_vgg19_5.py --workdir=/tmp/cifar10_vgg19_5
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar10', 'vgg19')
  config.model.g = (1, 1, 4, 16)
  config.model.p = (1, 2, 4, 16)
  return config
