"""srlib: non-local attention for single-image super-resolution, built from scratch.

Subpackages and modules:

* :mod:`srlib.imresize` - MATLAB-compatible bicubic resize (the degradation);
* :mod:`srlib.metrics` - PSNR / SSIM on the Y channel, as the papers compute them;
* :mod:`srlib.data` - benchmark and training images, LR generation, patch sampling;
* :mod:`srlib.attention` - the attention mechanisms (dense, region, cross-scale,
  sparse), each a registered plug-in (``build_attention``, ``check_attention``),
  with float64 loop versions in :mod:`srlib.attention.loops`;
* :mod:`srlib.models` - model registry (``build_model``): bicubic, EDSR-baseline,
  CSNLN and NLSN, whose attention slots take any registered attention of the right kind;
* :mod:`srlib.registry` - the name -> builder machinery both registries share;
* :mod:`srlib.train`, :mod:`srlib.evaluate` - training loop and benchmark evaluation;
* :mod:`srlib.checkpoint`, :mod:`srlib.plugins` - checkpoints (``weights_only``) and
  plugin files that register attention modules or models;
* :mod:`srlib.bench` - time and memory of every registered attention;
* :mod:`srlib.viz` - comparison figures and attention maps;
* :mod:`srlib.cli` - the ``srlib`` command.

Images are ``torch.Tensor`` RGB in channel-first layout ``(3, H, W)`` or
``(N, 3, H, W)``: ``uint8`` in 0..255 on disk and for metrics, ``float32`` in
[0, 1] inside models.
"""

__version__ = "0.1.0"
