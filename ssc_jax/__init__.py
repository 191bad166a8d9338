"""ssc_jax: structured sparse convolutions (SSC) in JAX/Flax."""

from ssc_jax.layers import SSCConv
from ssc_jax.layers import SSCStructure
from ssc_jax.layers import conv_output_size
from ssc_jax.layers import dense_kernel
from ssc_jax.layers import he_normal
from ssc_jax.layers import lecun_normal
from ssc_jax.layers import ssc_mask
from ssc_jax.layers import ssc_structure
from ssc_jax.layers import variance_scaling

__all__ = [
    'SSCConv', 'SSCStructure', 'conv_output_size', 'dense_kernel', 'he_normal',
    'lecun_normal', 'ssc_mask', 'ssc_structure', 'variance_scaling',
]
