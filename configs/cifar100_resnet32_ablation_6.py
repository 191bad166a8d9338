"""CIFAR-100, ResNet-32 (doubled width), ablation row 6 of supplementary Table 3
(all rows are meant as the 10% winning ticket).

g = [4, 8, 8], p = [4, 8, 9] on the layers with [32, 64, 128] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 9.61% of the conv + Dense weights and 11.44% of the MACs
(`python -m ssc_jax.budget`), against the stated 10% ticket; with
--config.model.taps=full (all 9 taps) 15.37% and 18.86%.
--config.model.ticket=0.10 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.cifar`; docs/configs.md, "Training recipe").
Paper test accuracy: 69.45%.

Run:
  python -m ssc_jax.main --config=configs/cifar100_resnet32_ablation_6.py --workdir=/tmp/cifar100_resnet32_ablation_6
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar100', 'resnet32')
  config.model.g = (4, 8, 8)
  config.model.p = (4, 8, 9)
  config.model.taps = 'cross'
  return config
