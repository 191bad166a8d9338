"""CIFAR-100, ResNet-32 (doubled width), ablation row 3 of supplementary Table 3
(all rows are meant as the 10% winning ticket).

g = [2, 4, 16], p = [2, 4, 5] on the layers with [32, 64, 128] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 9.94% of the conv + Dense weights and 18.17% of the MACs
(`python -m ssc_jax.budget`), against the stated 10% ticket; with
--config.model.taps=full (all 9 taps) 15.21% and 30.29%.
--config.model.ticket=0.10 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.cifar`; docs/configs.md, "Training recipe").
Paper test accuracy: 70.31%.

Run:
  python -m ssc_jax.main --config=configs/cifar100_resnet32_ablation_3.py --workdir=/tmp/cifar100_resnet32_ablation_3
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar100', 'resnet32')
  config.model.g = (2, 4, 16)
  config.model.p = (2, 4, 5)
  config.model.taps = 'cross'
  return config
