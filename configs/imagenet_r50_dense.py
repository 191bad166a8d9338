"""ImageNet, ResNet-50 v1.5, dense baseline (every g = 1).

Kept: 100% of the conv + Dense weights and of the MACs.
Recipe: the paper's (`config_lib.imagenet`; docs/configs.md, "Training recipe").

Run:
  python -m ssc_jax.main --config=configs/imagenet_r50_dense.py --workdir=/tmp/imagenet_r50_dense
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.imagenet()
  config.lowering = 'grouped'  # plain convolutions (g = 1), as nn.Conv
  return config
