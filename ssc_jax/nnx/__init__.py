"""Flax NNX modules: the SSC layer and the paper's networks.

`SSCConv` computes through `ssc_jax.ssc` exactly as the linen layer does
(same parameters, lowerings and tuning plan). `create_model` builds the
paper's networks from a config's `model` section; the main job trains the
linen networks (`ssc_jax.models`), and `load_linen` copies their variables
(e.g. a restored checkpoint) into the NNX network of the same config.
"""

from ssc_jax.nnx.conv import SSCConv
from ssc_jax.nnx.models import ResNet32
from ssc_jax.nnx.models import ResNet50
from ssc_jax.nnx.models import VGG
from ssc_jax.nnx.models import create_model
from ssc_jax.nnx.models import load_linen

__all__ = ['ResNet32', 'ResNet50', 'SSCConv', 'VGG', 'create_model', 'load_linen']
