"""srlib: non-local attention for single-image super-resolution, built from scratch.

Subpackages and modules:

* :mod:`srlib.imresize` - MATLAB-compatible bicubic resize (the degradation);
* :mod:`srlib.metrics` - PSNR / SSIM on the Y channel, as the papers compute them;
* :mod:`srlib.data` - benchmark and training images, LR generation, patch sampling;
* :mod:`srlib.models` - model registry (``build_model``), bicubic and EDSR baselines;
* :mod:`srlib.train`, :mod:`srlib.evaluate` - training loop and benchmark evaluation;
* :mod:`srlib.cli` - the ``srlib`` command.

Images are ``torch.Tensor`` RGB in channel-first layout ``(3, H, W)`` or
``(N, 3, H, W)``: ``uint8`` in 0..255 on disk and for metrics, ``float32`` in
[0, 1] inside models.
"""

__version__ = "0.1.0"
