"""The built-in :func:`~smcdiff.steer` methods: one module per family, one registry line each.

=================== ============================ =========================================
method              config (its options)         module
=================== ============================ =========================================
``fk``              :class:`FKConfig`            :mod:`smcdiff.steering.methods.fk`
``tds``             :class:`TDSConfig`           :mod:`smcdiff.steering.methods.fk`
``fkc``             :class:`FKCConfig`           :mod:`smcdiff.steering.methods.fkc`
``driftlite-vcg``   :class:`DriftLiteConfig`     :mod:`smcdiff.steering.methods.fkc`
``driftlite-ecg``   :class:`DriftLiteConfig`     :mod:`smcdiff.steering.methods.fkc`
``guidance``        :class:`GuidanceConfig`      :mod:`smcdiff.steering.methods.guidance`
``none``            :class:`SamplerConfig`       :mod:`smcdiff.steering.methods.guidance`
``mcgdiff``         :class:`MCGdiffConfig`       :mod:`smcdiff.steering.methods.mcgdiff`
``ddrm``            :class:`DDRMConfig`          :mod:`smcdiff.steering.methods.ddrm`
=================== ============================ =========================================
"""

from functools import partial

from smcdiff.steering.methods.ddrm import DDRMConfig, build_ddrm
from smcdiff.steering.methods.diffusion import SamplerConfig
from smcdiff.steering.methods.fk import FKConfig, TDSConfig, build_fk, build_tds
from smcdiff.steering.methods.fkc import DriftLiteConfig, FKCConfig, build_fkc
from smcdiff.steering.methods.guidance import GuidanceConfig, build_guidance, build_none
from smcdiff.steering.methods.mcgdiff import MCGdiffConfig, build_mcgdiff
from smcdiff.steering.registry import register_method

__all__ = [
    "DDRMConfig",
    "DriftLiteConfig",
    "FKCConfig",
    "FKConfig",
    "GuidanceConfig",
    "MCGdiffConfig",
    "SamplerConfig",
    "TDSConfig",
]

register_method("fk", FKConfig, build_fk)
register_method("tds", TDSConfig, build_tds)
register_method("fkc", FKCConfig, build_fkc)
register_method("driftlite-vcg", DriftLiteConfig, partial(build_fkc, control="vcg"))
register_method("driftlite-ecg", DriftLiteConfig, partial(build_fkc, control="ecg"))
register_method("guidance", GuidanceConfig, build_guidance, weighted=False)
register_method("none", SamplerConfig, build_none, weighted=False)
register_method("mcgdiff", MCGdiffConfig, build_mcgdiff)
register_method("ddrm", DDRMConfig, build_ddrm, weighted=False)
