"""CIFAR-100, VGG-19, 2% winning ticket (supplementary 1.2).

g = [1, 4, 8, 64], p = [1, 4, 8, 25] on the layers with [64, 128, 256, 512] filters.
Kept: 3.91% of the conv + Dense weights (`python -m ssc_jax.budget`),
against the stated 2% ticket; add --config.model.ticket=0.02 to train
at exactly the stated fraction with solved (g, p).
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/cifar100_vgg19_2.py --workdir=/tmp/cifar100_vgg19_2
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar100', 'vgg19')
  config.model.g = (1, 4, 8, 64)
  config.model.p = (1, 4, 8, 25)
  return config
