"""CIFAR-100, VGG-19, 10% winning ticket (supplementary 1.2).

g = [1, 1, 2, 10], p = [1, 2, 2, 15] on the layers with [64, 128, 256, 512] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 9.61% of the conv + Dense weights and 26.42% of the MACs
(`python -m ssc_jax.budget`), against the stated 10% ticket; with
--config.model.taps=full (all 9 taps) 16.38% and 46.22%.
--config.model.ticket=0.10 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.cifar`; docs/configs.md, "Training recipe").
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/cifar100_vgg19_10.py --workdir=/tmp/cifar100_vgg19_10
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar100', 'vgg19')
  config.model.g = (1, 1, 2, 10)
  config.model.p = (1, 2, 2, 15)
  config.model.taps = 'cross'
  return config
