"""Reference networks, all called ``net(x, t)`` (``x`` ``(N, *event_shape)``, ``t`` ``(N,)``):
:class:`MLP` (vectors and small particle systems, optionally a scalar energy) and :class:`UNet`
(small images), with a :class:`TimeEmbedding`. Each records its constructor arguments in
``config``, so :func:`smcdiff.save_score` / :func:`smcdiff.load_score` rebuild it from one file.
"""

from smcdiff.nets.embedding import EMBEDDINGS, TimeEmbedding
from smcdiff.nets.mlp import MLP
from smcdiff.nets.unet import UNet

__all__ = ["EMBEDDINGS", "MLP", "TimeEmbedding", "UNet"]
