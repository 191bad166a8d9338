"""ImageNet, ResNet-50 v1.5, 20% winning ticket (supplementary 1.4).

g = [1, 1, 4, 6], p = [1, 2, 4, 8] on the 3x3 layers with [64, 128, 256, 512]
filters; p_1x1 = [1, 1, 4, 4, 8, 8] on the 1x1 layers with
[64, 128, 256, 512, 1024, 2048] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 23.77% of the conv + Dense weights and 35.27% of the MACs
(`python -m ssc_jax.budget`), against the stated 20% ticket; with
--config.model.taps=full (all 9 taps) 28.59% and 46.58%.
--config.model.ticket=0.20 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.imagenet`; docs/configs.md, "Training recipe").
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/imagenet_r50_20.py --workdir=/tmp/imagenet_r50_20
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.imagenet()
  config.model.g = (1, 1, 4, 6)
  config.model.p = (1, 2, 4, 8)
  config.model.p_1x1 = (1, 1, 4, 4, 8, 8)
  config.model.taps = 'cross'
  return config
