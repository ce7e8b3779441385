"""Super-resolution models and the registry that builds them by name.

>>> from srlib.models import build_model, available_models
>>> model = build_model("edsr_baseline", scale=2)        # doctest: +SKIP
>>> sr = model(lr)   # float32 RGB in [0, 1]: (N, 3, h, w) -> (N, 3, 2h, 2w)  # doctest: +SKIP

Registered here:

* ``bicubic`` (:mod:`srlib.models.bicubic`) - MATLAB bicubic, no parameters, any scale >= 2;
* ``edsr_baseline`` (:mod:`srlib.models.edsr`) - EDSR-baseline (Lim et al. 2017), x2/x3/x4;
* ``csnln`` (:mod:`srlib.models.csnln`) - CSNLN, cross-scale non-local attention (Mei et al. 2020), x2/x3/x4;
* ``nlsn`` (:mod:`srlib.models.nlsn`) - NLSN, EDSR with non-local sparse attention (Mei et al. 2021), x2/x3/x4;
* ``dlsn`` (:mod:`srlib.models.dlsn`) - DLSN, residual modules with global learnable attention (Su et al.), x2/x3/x4;
* ``amrsr`` (:mod:`srlib.models.amrsr`) - a compact AMRSR generator with multi-reference attention
  (Pesavento et al. 2021), x4, a ``"reference"`` model: ``forward(lr, references)``.

Shared layers (``conv3x3``, ``MeanShift``, ``ResidualBlock``, ``Upsampler``,
``ResidualAttention``) are in :mod:`srlib.models.blocks`.  The attention slots of
``csnln`` and ``nlsn`` take any registered attention of the kind they need
(``srlib.attention.available_attention(kind)``).

A new model module registers itself with ``@register_model("name", presets=...)``;
every public module of this package is imported at the end of this file, so a
new file here needs no edit elsewhere (or it lives in a plugin file:
``srlib train --plugin FILE.py``).
"""

import importlib as _importlib
import pkgutil as _pkgutil

from srlib.models.profile import (
    count_flops,
    count_parameters,
    model_device,
    model_summary,
)
from srlib.models.registry import (
    MODEL_KINDS,
    available_models,
    build_model,
    check_lr_batch,
    check_scale,
    model_kind,
    model_options,
    model_presets,
    register_model,
    takes_references,
    upgrade_checkpoint,
)

__all__ = [
    "register_model",
    "build_model",
    "available_models",
    "MODEL_KINDS",
    "model_kind",
    "takes_references",
    "model_options",
    "model_presets",
    "upgrade_checkpoint",
    "check_scale",
    "check_lr_batch",
    "count_parameters",
    "count_flops",
    "model_summary",
    "model_device",
]

# Register every model of the package: import each public module (a new file needs no edit here).
for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")
