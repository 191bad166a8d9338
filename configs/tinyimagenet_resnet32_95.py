"""Tiny-ImageNet, ResNet-32 (doubled width), 95% pruning (supplementary 1.3).

g = [2, 10, 64], p = [2, 16, 32] on the layers with [32, 64, 128] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 5.43% of the conv + Dense weights and 13.52% of the MACs
(`python -m ssc_jax.budget`), against the stated 5% ticket; with
--config.model.taps=full (all 9 taps) 7.87% and 22.81%.
--config.model.ticket=0.05 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.tiny_imagenet`; docs/configs.md, "Training recipe").
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_resnet32_95.py --workdir=/tmp/tinyimagenet_resnet32_95
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('resnet32')
  config.model.g = (2, 10, 64)
  config.model.p = (2, 16, 32)
  config.model.taps = 'cross'
  return config
