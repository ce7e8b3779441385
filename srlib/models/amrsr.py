"""AMRSR: a compact reference-based SR generator with hierarchical multi-reference attention (x4).

Source: M. Pesavento, M. Volino, A. Hilton, "Attention-based Multi-Reference
Learning for Image Super-Resolution", ICCV 2021, supplementary material
(Table 1: generator layers; Sec. 1: VGG19 relu1_1 / relu2_1 / relu3_1 levels,
the correspondences found at relu3_1 and projected to the other two); SRNTT
(Zhang et al., CVPR 2019) for the texture transfer it builds on.  No code was
released: what Table 1 leaves open is marked **our reading**.

Data flow for an LR batch ``(N, 3, h, w)``, ``F = n_feats``, references
``(N, 3, H_m, W_m)`` HR images (``H_m, W_m`` multiples of 4)::

    matching:  bicubic x4 of lr ──extractor──> level 3 (N, c3, h, w)        query
               each reference: bicubic /4 then x4 (same blur) ──> level 3   keys
               match_references(query, keys)  ──> indices, W (N, 1, h, w)   (srlib.attention.multi_reference)
    values:    each HR reference ──extractor──> level 1 (s=4), 2 (s=2), 3 (s=1)
               transfer_patches(...) ──> O_3 (N, c3, h, w), O_2 (N, c2, 2h, 2w), O_1 (N, c1, 4h, 4w)
    generator (Table 1):
        x = ResBlocks(conv(lr))                                          layer 0        (N, F, h, w)
        y = LReLU(conv([x, W O_3])); y = x + ResBlocks_n1(y)             layers 1-19
        u = LReLU(shuffle2(conv(y)))                                     layer 20       (N, F, 2h, 2w)
        y = LReLU(conv([u, W O_2])); y = u + ResBlocks_n2(y)             layers 21-31
        u = LReLU(shuffle2(conv(y)))                                     layer 32       (N, F, 4h, 4w)
        y = LReLU(conv([u, W O_1])); y = u + ResBlocks_n3(y)             layers 33-39
        sr = conv(y) (F -> 3)                                            layer 40       (N, 3, 4h, 4w)

Our reading of Table 1:

* **Three "Conv, PixelShuffle(2x)" rows and x4.**  Rows 20 and 32 take the
  features from the LR grid (where ``O_3`` lives, relu3_1 of an image at HR
  size is a quarter of it) to the grids of ``O_2`` and ``O_1``: that is x4.
  A third pixel shuffle at row 40 would give x8, which no reference-SR
  benchmark uses; we read row 40 as the output convolution to RGB.
* **W gates the maps** (``W * O_l``, ``W`` upsampled by nearest neighbour to
  each level), as SRNTT weights its swapped features by the similarity.
* **Residual blocks** are conv-ReLU-conv with an identity (no scaling), and
  the first feature extraction (row 0) is a conv followed by residual blocks.

Matching features (``extractor``):

* ``"learned"`` - a small texture extractor trained with the model (as TTSR
  does): three conv stages at full, 1/2 and 1/4 resolution;
* ``"patches"`` - no learning: the image itself, average-pooled to each
  level's resolution (the matching compares normalised 3x3 patches of the
  1/4-resolution image);
* ``"vgg19"`` - torchvision's VGG19 relu1_1 / relu2_1 / relu3_1 with weights
  read from ``vgg_weights`` (a state-dict file: none can be downloaded here);
  frozen, ImageNet input normalisation.

Without references (``use_references=False``) the same generator, with its
concatenations left out, is the single-image baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srlib.attention._common import choice, positive_int
from srlib.attention.multi_reference import (
    ReferenceMatch,
    match_references,
    transfer_patches,
)
from srlib.imresize import imresize
from srlib.models.blocks import ResidualBlock, conv3x3
from srlib.models.registry import check_lr_batch, check_scale, register_model

__all__ = ["AMRSR", "AMRSR_SCALES", "EXTRACTORS", "TextureExtractor"]

AMRSR_SCALES = (4,)
#: How the matching and value features are made (see the module docstring).
EXTRACTORS = ("learned", "patches", "vgg19")
# ImageNet statistics that torchvision's VGG19 weights expect.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class TextureExtractor(nn.Module):
    """Three levels of features of an image: full, 1/2 and 1/4 resolution (SRNTT's relu1_1, relu2_1, relu3_1).

    Args:
        kind: ``"learned"``, ``"patches"`` or ``"vgg19"`` (:data:`EXTRACTORS`).
        channels: ``(c1, c2, c3)`` of the learned extractor (ignored otherwise:
            ``(3, 3, 3)`` for patches, ``(64, 128, 256)`` for VGG19).
        vgg_weights: a VGG19 state-dict file (``torchvision.models.vgg19``
            layout), required for ``"vgg19"``.

    Forward: float RGB in [0, 1] ``(N, 3, H, W)`` with ``H, W`` multiples of 4 ->
    ``[(N, c1, H, W), (N, c2, H/2, W/2), (N, c3, H/4, W/4)]``.

    Raises:
        ValueError: unknown kind; ``"vgg19"`` without a weights file.
        ImportError: ``"vgg19"`` without torchvision installed (the message says what to install).
    """

    def __init__(self, kind: str = "learned", channels=(16, 32, 64), vgg_weights: str | None = None):
        super().__init__()
        self.kind = choice("extractor", kind, EXTRACTORS)
        if self.kind == "learned":
            c1, c2, c3 = (positive_int("extractor channels", c) for c in channels)
            self.level1 = nn.Sequential(conv3x3(3, c1), nn.ReLU(), conv3x3(c1, c1), nn.ReLU())
            self.level2 = nn.Sequential(nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(), conv3x3(c2, c2), nn.ReLU())
            self.level3 = nn.Sequential(nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.ReLU(), conv3x3(c3, c3), nn.ReLU())
            self.channels = (c1, c2, c3)
        elif self.kind == "patches":
            self.channels = (3, 3, 3)
        else:
            if not vgg_weights:
                raise ValueError("extractor='vgg19' needs vgg_weights=<a torchvision VGG19 state-dict file>: no "
                                 "pretrained weights can be downloaded here; or use extractor='learned' or 'patches'")
            try:
                from torchvision.models import vgg19
            except ImportError as error:
                raise ImportError("extractor='vgg19' needs torchvision: pip install torchvision") from error
            features = vgg19(weights=None).features
            state = torch.load(vgg_weights, map_location="cpu", weights_only=True)
            prefix = "features."
            features.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            self.level1, self.level2, self.level3 = features[:2], features[2:7], features[7:12]  # relu1_1, 2_1, 3_1
            for p in self.parameters():
                p.requires_grad_(False)
            self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
            self.channels = (64, 128, 256)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "patches":
            return [image, F.avg_pool2d(image, 2), F.avg_pool2d(image, 4)]  # (N, 3, H, W), /2, /4
        if self.kind == "vgg19":
            image = (image - self.mean) / self.std
        f1 = self.level1(image)  # (N, c1, H, W)
        f2 = self.level2(f1)  # (N, c2, H/2, W/2)
        f3 = self.level3(f2)  # (N, c3, H/4, W/4)
        return [f1, f2, f3]


class _Stage(nn.Module):
    """``y = LReLU(conv([x, map])); out = x + ResBlocks(y)`` (Table 1 rows 1-19, 21-31, 33-39)."""

    def __init__(self, n_feats: int, map_channels: int, n_blocks: int):
        super().__init__()
        self.fuse = nn.Sequential(conv3x3(n_feats + map_channels, n_feats), nn.LeakyReLU(0.2))
        self.blocks = nn.Sequential(*[ResidualBlock(n_feats, 1.0) for _ in range(n_blocks)])

    def forward(self, x: torch.Tensor, reference_map: torch.Tensor | None) -> torch.Tensor:
        y = x if reference_map is None else torch.cat([x, reference_map], dim=1)  # (N, F [+ c], H, W)
        return x + self.blocks(self.fuse(y))  # (N, F, H, W)


#: Training settings of the compact x4 model per preset (``srlib train --model amrsr --scale 4``): target
#: patches of 24 LR pixels (96 HR) with 2 reference crops of 96 HR pixels, 8 per batch; multi-view samples
#: from the training scenes and self-references from T91; validation on the shipped MultiViewRef_mini
#: (half-size copies of three MultiViewRef groups: it is watched, never used to pick a checkpoint).
_REFERENCE_TRAINING = {"scale": 4, "lr_patch": 24, "batch_size": 8, "references": 2, "train_sets": ["T91"],
                       "val_set": "MultiViewRef_mini", "final_sets": ["MultiViewRef"]}


@register_model(
    "amrsr",
    kind="reference",
    presets={
        # Fixed-patch matching: at this budget the learned extractor (trained from scratch with L1 only) ended
        # level with the baseline, 30.27 vs 30.26 dB on MultiViewRef; data/checkpoints/README.md.
        "quick": {**_REFERENCE_TRAINING, "steps": 2400, "val_every": 600, "checkpoint_every": 600,
                  "model_options": {"extractor": "patches"}},
        "full": {**_REFERENCE_TRAINING, "model_options": {"n_feats": 64, "n_blocks": [16, 8, 4]}},
        "smoke": {**_REFERENCE_TRAINING, "references": 1, "lr_patch": 12, "batch_size": 2, "val_max_images": 1,
                  "final_sets": ["MultiViewRef_mini"],
                  "model_options": {"n_feats": 8, "n_blocks": [1, 1, 1], "head_blocks": 1,
                                    "extractor_channels": [4, 8, 8]}},
    },
)
class AMRSR(nn.Module):
    """The AMRSR generator (supplement Table 1, our reading for x4) with hierarchical multi-reference attention.

    Args:
        scale: 4.
        n_feats: generator channels ``F`` (64 in SRNTT-style generators; 32 here).
        n_blocks: residual blocks of the three stages (Table 1: 16, 8, 4; here ``(4, 2, 1)``),
            plus ``head_blocks`` before the first.
        head_blocks: residual blocks of the first feature extraction (row 0).
        extractor: ``"learned"``, ``"patches"`` or ``"vgg19"``.
        extractor_channels: ``(c1, c2, c3)`` of the learned extractor.
        vgg_weights: the VGG19 weights file for ``extractor="vgg19"``.
        n_subvectors, reference_parts, input_parts: the attention's ``N_C``,
            ``N_R``, ``N_I`` (:func:`srlib.attention.multi_reference.match_references`).
        use_references: False builds the single-image baseline (no maps, no extractor).

    Forward ``forward(lr, references=None, return_details=False)``: ``lr`` float32
    RGB in [0, 1] ``(N, 3, h, w)``; ``references`` a list of ``N_M >= 1`` HR
    images ``(N, 3, H_m, W_m)`` in [0, 1] (cropped here to multiples of 4; each at
    least 12x12) -> ``(N, 3, 4h, 4w)``.  With ``return_details=True`` also a dict
    with the :class:`~srlib.attention.multi_reference.ReferenceMatch` and the maps.

    Raises:
        ValueError: bad options; a reference model called without references
            (or a baseline called with them); input that is not ``(N, 3, h, w)``.
    """

    def __init__(
        self,
        scale: int = 4,
        n_feats: int = 32,
        n_blocks=(4, 2, 1),
        head_blocks: int = 2,
        extractor: str = "learned",
        extractor_channels=(16, 32, 64),
        vgg_weights: str | None = None,
        n_subvectors: int = 1,
        reference_parts=1,
        input_parts=1,
        use_references: bool = True,
    ):
        super().__init__()
        check_scale("amrsr", scale, AMRSR_SCALES)
        self.scale = scale
        n_feats = positive_int("n_feats", n_feats)
        if len(tuple(n_blocks)) != 3:
            raise ValueError(f"n_blocks must give the residual blocks of the 3 stages, got {n_blocks!r}")
        blocks = [positive_int("n_blocks", b, 0) for b in n_blocks]
        if not isinstance(use_references, bool):
            raise TypeError(f"use_references must be True or False, got {use_references!r}")
        self.use_references = use_references
        self.takes_references = use_references  # the baseline is called as model(lr)
        self.n_subvectors = positive_int("n_subvectors", n_subvectors)
        self.reference_parts, self.input_parts = reference_parts, input_parts
        if use_references:
            self.extractor = TextureExtractor(extractor, extractor_channels, vgg_weights)
            c1, c2, c3 = self.extractor.channels
        else:
            c1 = c2 = c3 = 0
        self.head = nn.Sequential(conv3x3(3, n_feats), *[ResidualBlock(n_feats, 1.0) for _ in range(head_blocks)])
        self.stage3 = _Stage(n_feats, c3, blocks[0])  # LR grid, with O_3
        self.up1 = nn.Sequential(conv3x3(n_feats, 4 * n_feats), nn.PixelShuffle(2), nn.LeakyReLU(0.2))
        self.stage2 = _Stage(n_feats, c2, blocks[1])  # 2x, with O_2
        self.up2 = nn.Sequential(conv3x3(n_feats, 4 * n_feats), nn.PixelShuffle(2), nn.LeakyReLU(0.2))
        self.stage1 = _Stage(n_feats, c1, blocks[2])  # 4x, with O_1
        self.tail = conv3x3(n_feats, 3)

    def reference_maps(self, lr: torch.Tensor, references) -> tuple[list[torch.Tensor], ReferenceMatch]:
        """``[W O_3, W O_2, W O_1]`` (LR, 2x, 4x grids) and the match, for ``lr`` ``(N, 3, h, w)`` and HR references."""
        references = [r[..., : r.shape[-2] - r.shape[-2] % 4, : r.shape[-1] - r.shape[-1] % 4] for r in references]
        for m, r in enumerate(references):
            if r.dim() != 4 or r.shape[:2] != (lr.shape[0], 3) or min(r.shape[-2:]) < 12:
                raise ValueError(f"reference {m} must be an RGB batch (N, 3, H_m, W_m) like lr with H_m, W_m >= 12, "
                                 f"got {tuple(r.shape)}")
        upsampled = imresize(lr, scale=4)  # (N, 3, 4h, 4w), the matching side of the input
        query = self.extractor(upsampled)[2]  # (N, c3, h, w)
        keys = [self.extractor(imresize(imresize(r, scale=0.25), scale=4))[2] for r in references]  # same blur
        levels = [self.extractor(r) for r in references]  # [(N, c1, H, W), (N, c2, H/2, W/2), (N, c3, H/4, W/4)]
        match = match_references(query, keys, 3, self.n_subvectors, self.reference_parts, self.input_parts)
        maps = []
        for level, stride in ((2, 1), (1, 2), (0, 4)):  # O_3: 3x3 patches; O_2: 6x6, stride 2; O_1: 12x12, stride 4
            pasted = transfer_patches(match, [features[level] for features in levels], stride=stride)
            maps.append(pasted * F.interpolate(match.weight, scale_factor=stride, mode="nearest"))  # gated by W
        return maps, match

    def forward(self, lr: torch.Tensor, references=None, return_details: bool = False):
        check_lr_batch(lr)
        if self.use_references and not references:
            raise ValueError("this AMRSR model is a reference model: pass references=[HR image batch, ...]; "
                             "build it with use_references=False for the single-image baseline")
        if not self.use_references and references:
            raise ValueError("this AMRSR model is the single-image baseline (use_references=False): it takes no "
                             "references")
        maps, match = self.reference_maps(lr, list(references)) if self.use_references else ([None] * 3, None)
        x = self.head(lr)  # (N, F, h, w), row 0
        y = self.stage3(x, maps[0])  # rows 1-19
        y = self.stage2(self.up1(y), maps[1])  # rows 20-31, (N, F, 2h, 2w)
        y = self.stage1(self.up2(y), maps[2])  # rows 32-39, (N, F, 4h, 4w)
        sr = self.tail(y)  # row 40 (our reading: the output conv), (N, 3, 4h, 4w)
        if return_details:
            return sr, {"match": match, "maps": maps}
        return sr
