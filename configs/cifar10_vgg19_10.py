"""CIFAR-10, VGG-19, 10% winning ticket (supplementary 1.1).

g = [1, 2, 4, 16], p = [1, 2, 2, 2] on the layers with [64, 128, 256, 512] filters.
Kept: 13.93% of the conv + Dense weights (`python -m ssc_jax.budget`),
against the stated 10% ticket; add --config.model.ticket=0.10 to train
at exactly the stated fraction with solved (g, p).
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/cifar10_vgg19_10.py --workdir=/tmp/cifar10_vgg19_10
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar10', 'vgg19')
  config.model.g = (1, 2, 4, 16)
  config.model.p = (1, 2, 2, 2)
  return config
