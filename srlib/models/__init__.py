"""Super-resolution models and the registry that builds them by name.

>>> from srlib.models import build_model, available_models
>>> model = build_model("edsr_baseline", scale=2)        # doctest: +SKIP
>>> sr = model(lr)   # float32 RGB in [0, 1]: (N, 3, h, w) -> (N, 3, 2h, 2w)  # doctest: +SKIP

Registered here:

* ``bicubic`` (:mod:`srlib.models.bicubic`) - MATLAB bicubic, no parameters, any scale >= 2;
* ``edsr_baseline`` (:mod:`srlib.models.edsr`) - EDSR-baseline (Lim et al. 2017), x2/x3/x4;
* ``csnln`` (:mod:`srlib.models.csnln`) - CSNLN, cross-scale non-local attention (Mei et al. 2020), x2/x3/x4.

A new model module registers itself with ``@register_model("name")`` and is
imported below so that importing :mod:`srlib.models` makes it available.
"""

# Importing the model modules registers their builders.
from srlib.models import bicubic as _bicubic  # noqa: F401
from srlib.models import csnln as _csnln  # noqa: F401
from srlib.models import edsr as _edsr  # noqa: F401
from srlib.models import nlsn as _nlsn  # noqa: F401
from srlib.models.profile import (
    count_flops,
    count_parameters,
    model_device,
    model_summary,
)
from srlib.models.registry import (
    available_models,
    build_model,
    check_lr_batch,
    check_scale,
    model_options,
    register_model,
)

__all__ = [
    "register_model",
    "build_model",
    "available_models",
    "model_options",
    "check_scale",
    "check_lr_batch",
    "count_parameters",
    "count_flops",
    "model_summary",
    "model_device",
]
