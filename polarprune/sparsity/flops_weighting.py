"""What one channel of a regularized BN costs, for the FLOPs-weighted lambda (``sparsity.flops_weighting``).

The polarization code's ``--flops-weighted`` scales lambda per BN by the MACs one channel of
that BN costs, min-max normalised over the network's regularized BNs and mapped into
``[weight_min, weight_max]`` (``regularizers.flops_weights`` does the mapping). Two ways to
price a channel:

- ``residual`` (polarprune's default): the producer conv's MACs per output channel plus every
  consumer's MACs per input channel, consumers found through residual additions too (what
  removing the channel from its whole coupled group saves; ``pruning.graph.channel_macs``).
- ``original`` (the paper's code): the producer's MACs per output channel plus the MACs per
  input channel of the layers that read the BN *directly* (through ReLU/pooling only). On a
  ResNet-56 block: ``bn1`` = ``conv1`` outputs + ``conv2`` inputs, ``bn2`` = ``conv2`` outputs
  only, because the original scatters a pruned ``bn2`` back to full width before the
  addition and nothing downstream shrinks.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import nn

from ..conv_links import LayerShape, conv_links
from ..errors import PolarpruneError

FLOPS_WEIGHTINGS = ("residual", "original")


def original_channel_macs(model: nn.Module, layers: Mapping[str, LayerShape], bn_names: Sequence[str]) -> dict[str, float]:
    """Per BN, the MACs one of its channels costs in the original code's view (see the module
    docstring); ``layers``: the layers' MACs from the pruning analysis (``ModelAnalysis.layer_shapes()``)."""
    links = conv_links(model, layers)
    missing = [name for name in bn_names if name not in links.bn_channels]
    if missing:
        raise PolarpruneError(f"flops_weighting original: {missing[0]!r} is not a BatchNorm of the model")
    return {name: links.direct_channel_macs(name) for name in bn_names}


__all__ = ["FLOPS_WEIGHTINGS", "original_channel_macs"]
