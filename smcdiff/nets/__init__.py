"""Reference networks, all called ``net(x, t)`` (``x`` ``(N, *event_shape)``, ``t`` ``(N,)``):
:class:`MLP` (vectors and small particle systems, optionally a scalar energy), :class:`UNet`
(small images) and :class:`EGNN` (E(n)-equivariant and mean-free, for particle systems), with a
:class:`TimeEmbedding`. Each records its constructor arguments in ``config``, so :func:`smcdiff.save_score` / :func:`smcdiff.load_score` rebuild it from one file.
"""

from smcdiff.nets.egnn import EGNN
from smcdiff.nets.embedding import EMBEDDINGS, TimeEmbedding
from smcdiff.nets.mlp import MLP
from smcdiff.nets.unet import UNet

__all__ = ["EGNN", "EMBEDDINGS", "MLP", "TimeEmbedding", "UNet"]
