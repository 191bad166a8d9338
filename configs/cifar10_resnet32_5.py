"""CIFAR-10, ResNet-32 (doubled width), 5% winning ticket (supplementary Table 1;
its printed "p" column read as g and "g" as p, see SSC_SPEC.md).

g = [2, 8, 64], p = [2, 8, 32] on the layers with [32, 64, 128] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 4.58% of the conv + Dense weights and 14.19% of the MACs
(`python -m ssc_jax.budget`), against the stated 5% ticket; with
--config.model.taps=full (all 9 taps) 7.26% and 23.83%.
--config.model.ticket=0.05 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.cifar`; docs/configs.md, "Training recipe").
Paper test accuracy: 91.7%.

Run:
  python -m ssc_jax.main --config=configs/cifar10_resnet32_5.py --workdir=/tmp/cifar10_resnet32_5
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar10', 'resnet32')
  config.model.g = (2, 8, 64)
  config.model.p = (2, 8, 32)
  config.model.taps = 'cross'
  return config
