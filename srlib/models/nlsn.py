"""NLSN: an EDSR backbone with non-local sparse attention (NLSA) blocks between its residual blocks.

Source: Y. Mei, Y. Fan and Y. Zhou, "Image Super-Resolution with Non-Local
Sparse Attention", CVPR 2021, and its supplementary file.  Official code:
github.com/HarukiYqM/Non-Local-Sparse-Attention.  The attention itself lives in
:mod:`srlib.attention.sparse` (:class:`~srlib.attention.sparse.NonLocalSparseAttention`,
hashing in :mod:`srlib.attention.lsh`); this module only wires it into the
EDSR backbone of :mod:`srlib.models.edsr` (mean shift, residual blocks,
pixel-shuffle up-sampler).

Data flow (shapes for an LR batch ``(N, 3, h, w)``, ``F = n_feats``, ``s = scale``,
``B = n_blocks``, ``k = attention_every``)::

    lr ──subtract DIV2K mean──> head conv 3x3 (3 -> F) ──> x0                  (N, F, h, w)
    body: NLSA_0
          ResidualBlock_1 ... ResidualBlock_k        NLSA_1
          ResidualBlock_k+1 ... ResidualBlock_2k     NLSA_2
          ...                                         (an NLSA after block i when i % k == 0)
          ──> body conv 3x3 ──(+ x0)──> features                               (N, F, h, w)
    features ──> Upsampler (conv + pixel shuffle) ────────────────────────────> (N, F, s*h, s*w)
             ──> tail conv 3x3 (F -> 3) ──add DIV2K mean──> sr                 (N, 3, s*h, s*w)

Where the NLSAs sit.  One NLSA right after the head (before the first
residual block) and one after every ``k``-th residual block, i.e. after
blocks ``k, 2k, ..., k * (B // k)``: ``1 + B // k`` NLSAs in all, every one of
them inside the long skip connection.  When ``k`` divides ``B`` the last NLSA
comes right after the last residual block, just before the body conv.  The
official network (``B = 32``, ``k = 8``) has 5: before block 1 and after
blocks 8, 16, 24 and 32.  The compact default here (``B = 8``, ``k = 4``) has 3:
before block 1 and after blocks 4 and 8.  :attr:`NLSN.attention_after_blocks`
lists, for each NLSA in order, how many residual blocks precede it.

Each NLSA maps ``(N, F, h, w)`` to ``(N, F, h, w)``:
``x + attention_res_scale * NLSA(match(x), match(x), assembly(x))`` with a 3x3
conv ``F -> F // reduction`` match embedding (queries and keys) and a 1x1 conv
``F -> F`` assembly embedding (values); positions are hashed into buckets by
spherical LSH (``n_rounds`` rounds), sorted, cut into chunks of
``chunk_size`` positions, and each query attends to its own and the two
neighbouring chunks.  Everything runs on the LR map.

Parameters.  With ``E = F // reduction`` and ``A = 1 + B // k`` NLSAs::

    head        9 * 3 * F + F
    blocks      B * 2 * (9 F^2 + F)
    body conv   9 F^2 + F
    upsampler   s^2 (9 F^2 + F) at x2 and x3,  8 (9 F^2 + F) at x4 (two x2 stages)
    tail        9 * F * 3 + 3
    NLSAs       A * (9 F E + E + F^2 + F)

The compact default (``F = 32``, ``B = 8``, ``k = 4``) has 206,075 parameters at
x2, 10,104 of them in its 3 NLSAs.  On a 48x48 LR input it costs 1.92 GFLOPs at
x2 (2.15 at x3, 2.64 at x4; 2 FLOPs per multiply-add,
:func:`srlib.models.count_flops`), and the 3 NLSAs take 1.01 of the 1.92: at
``L = 2304`` positions (16 buckets, 16 chunks) each query meets
``3 * 144 = 432`` keys in each of the 4 rounds, i.e. ``4 * 432 * (E + F) =
69,120`` multiply-adds per position for scores and values, 7.5 times the
``9 F^2 = 9,216`` of one 3x3 convolution.  At this width the attention, not the
convolutions, dominates the cost (at 256 channels it is the other way round).

Paper and official code versus this module:

* **Placement.**  The official code hard-codes "an NLSA after every 8th
  block" (and ``reduction=4``); here both are options, ``attention_every``
  and ``reduction``, with the same rule.
* **Residual scaling.**  The official code passes its single ``res_scale``
  option (``--res_scale 0.1`` in its training and test scripts) both to the
  residual blocks and to every NLSA (the attention branch is multiplied by 0.1
  before the addition).  Here the two are separate options: ``res_scale``
  (residual blocks, default 0.1 as in the code) and ``attention_res_scale``
  (NLSAs, default 1.0, the attention module's own default, so that the
  attention of the small network is not damped; 0.1 in
  :data:`NLSN_OFFICIAL_OPTIONS`).
* **Randomness.**  The official code draws fresh hash rotations from the global
  RNG at every forward, at test time too, so two evaluations of one image
  differ (by about 1e-2) and the repository fixes the global seed.  Here each
  NLSA has its own seed, ``seed + i`` for the ``i``-th NLSA (``i = 0, 1, ...``
  in body order), so the modules hash with independent rotations: in eval mode
  every forward re-uses the NLSA's seed (deterministic: the same image gives the
  same output), in training mode each NLSA draws fresh rotations at every call
  from its own generator seeded with its seed (repeatable from the seed;
  :meth:`NLSN.reset_attention_generators` restarts the sequences).
* **Tiny maps.**  The official bucket rule crashes for maps of fewer than 144
  positions; here any LR size works (at least 2 buckets; with a single chunk
  NLSA is dense attention).  See :mod:`srlib.attention.sparse` for the
  attention-level differences (masked padding, each distinct neighbour chunk
  once, stable sort).
* **Test-time tiling.**  The official test script splits images until tiles
  have fewer than 120,000 LR pixels (``forward_chop``); an NLSA then sees only
  the positions of its tile, so reported PSNRs depend on the tile policy.

Official size (:data:`NLSN_OFFICIAL_OPTIONS`: 256 channels, 32 residual blocks,
5 NLSAs): 41,796,163 parameters at x2, 44,746,563 at x3 and 44,156,483 at x4 -
the "44M" of the paper is the x4 (and x3) model; 1,066,560 of them belong to
the five NLSAs.  Build it with ``build_model("nlsn", 4, **NLSN_OFFICIAL_OPTIONS)``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from srlib.attention.lsh import DEFAULT_CHUNK_SIZE
from srlib.attention.non_local import non_local_attention
from srlib.attention.sparse import (
    NonLocalSparseAttention,
    SparseAttentionDetails,
    normalize_keys,
)
from srlib.models.edsr import (
    DIV2K_RGB_MEAN,
    MeanShift,
    ResidualBlock,
    Upsampler,
    conv3x3,
)
from srlib.models.registry import check_lr_batch, check_scale, register_model

__all__ = [
    "ATTENTION_KINDS",
    "NLSN",
    "NLSN_OFFICIAL_OPTIONS",
    "NLSN_SCALES",
    "DenseMatchAttention",
    "attention_positions",
]

NLSN_SCALES = (2, 3, 4)

# The released NLSN (official code's defaults): EDSR with 32 residual blocks of 256 channels,
# res_scale 0.1 passed to the blocks and to the 5 NLSAs, match embedding 256 -> 64 channels,
# chunks of 144 positions, 4 hashing rounds, bucket count from the map size.
# 41,796,163 parameters at x2, 44,746,563 at x3, 44,156,483 at x4 ("44M").
NLSN_OFFICIAL_OPTIONS = {
    "n_feats": 256,
    "n_blocks": 32,
    "attention_every": 8,
    "reduction": 4,
    "chunk_size": 144,
    "n_rounds": 4,
    "n_buckets": None,
    "res_scale": 0.1,
    "attention_res_scale": 0.1,
}

# Seeds are passed to torch.Generator.manual_seed as seed + i; keep them far from its limits.
_MAX_SEED = 2**63 - 1024


def attention_positions(n_blocks: int, attention_every: int) -> tuple[int, ...]:
    """Where the NLSAs of an NLSN body sit: the number of residual blocks before each, in order.

    One NLSA before the first block, then one after every ``attention_every``-th
    block (the official rule "after block ``i`` when ``i % attention_every == 0``",
    counting blocks from 1).

    Args:
        n_blocks: ``B``, residual blocks in the body (>= 0).
        attention_every: ``k``, blocks between two NLSAs (>= 1).

    Returns:
        ``(0, k, 2k, ..., k * (B // k))``: ``1 + B // k`` entries.  For example
        ``(0, 8, 16, 24, 32)`` for the official ``B = 32, k = 8`` and ``(0, 4, 8)``
        for ``B = 8, k = 4``; ``B = 10, k = 4`` gives ``(0, 4, 8)`` (the last two
        blocks have no NLSA after them).

    Raises:
        ValueError: ``n_blocks`` is not an integer >= 0 or ``attention_every``
            not an integer >= 1.
    """
    n_blocks = _integer("n_blocks", n_blocks, minimum=0)
    attention_every = _integer("attention_every", attention_every, minimum=1)
    return tuple(range(0, n_blocks + 1, attention_every))


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive_real(name: str, value, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number ({hint}), got {value!r}")
    return float(value)


ATTENTION_KINDS = ("sparse", "dense", "none")


class DenseMatchAttention(NonLocalSparseAttention):
    """NLSA's embeddings with dense attention: every query attends to every position (no hashing).

    The "Non-Local" column of the NLSN supplement's Table 1, built so that it
    differs from :class:`~srlib.attention.sparse.NonLocalSparseAttention` in
    nothing but sparsity: the same match (3x3 conv ``C -> C // reduction``) and
    assembly (1x1 conv ``C -> C``) embeddings, the same L2-normalised keys and
    raw queries, no scaling; the softmax runs over all ``H*W`` positions.  It is
    exactly NLSA with one bucket, one round and one chunk holding every position
    (the sparse module's tests check that equality).  ``chunk_size``,
    ``n_rounds``, ``n_buckets`` and ``seed`` are accepted and ignored, so the two
    classes share a constructor and a parameter count.

    Forward: ``x`` float ``(N, C, H, W)`` -> ``x + res_scale * attention``
    ``(N, C, H, W)``; time and memory grow with ``(H W)^2`` (the fused kernel
    avoids storing the matrix on CPU and CUDA).

    Raises:
        ValueError: ``x`` is not ``(N, C, H, W)``; ``return_details=True``
            (there are no buckets to report).
    """

    def forward(self, x: torch.Tensor, generator=None, return_details: bool = False) -> torch.Tensor:
        if return_details:
            raise ValueError("dense attention has no bucket details; build the model with attention='sparse'")
        match, assembly = self.embed(x)  # (N, C_e, H, W), (N, C, H, W)
        n, _, height, width = x.shape
        queries = match.flatten(2).transpose(1, 2)  # (N, L, C_e)
        keys = normalize_keys(queries)  # (N, L, C_e), unit keys
        values = assembly.flatten(2).transpose(1, 2)  # (N, L, C)
        attended = non_local_attention(queries, keys, values, implementation="fused")  # (N, L, C)
        attended = attended.transpose(1, 2).reshape(n, self.channels, height, width)  # (N, C, H, W)
        return x + self.res_scale * attended


@register_model("nlsn")  # the class is its own builder: its __init__ options are the registry options
class NLSN(nn.Module):
    """Non-Local Sparse Network: EDSR with NLSA blocks at the start of the body and after every k-th residual block.

    Args:
        scale: 2, 3 or 4.
        n_feats: feature channels ``F`` (256 in NLSN; 32 by default here).
        n_blocks: residual blocks ``B`` (32 in NLSN; 8 here); 0 leaves a
            single NLSA in the body.
        attention_every: ``k``, an NLSA after every ``k``-th residual block
            (8 in NLSN; 4 here); see :func:`attention_positions`.  There are
            ``1 + B // k`` NLSAs.
        reduction: the match embedding has ``F // reduction`` channels (4).
        chunk_size: positions per attention chunk (144).  A map with at most
            this many positions is one chunk: the NLSA is then dense attention.
        n_rounds: hashing rounds per NLSA (4).
        n_buckets: buckets per round, an even integer >= 2, or ``None`` for
            NLSN's rule ``min(L // 144 + (L // 144) % 2, 128)`` from the number
            of positions ``L = h*w`` of the LR map (at least 2; see
            :func:`srlib.attention.lsh.bucket_count`).
        res_scale: factor of the residual branch of every residual block (0.1,
            as the official code uses for its 256-channel model).
        attention_res_scale: factor of the attention branch of every NLSA
            (1.0; the official code passes its ``res_scale``, 0.1).
        seed: integer in ``[0, 2**63 - 1024)``; the ``i``-th NLSA (body order,
            from 0) hashes with seed ``seed + i`` (see "Randomness").
        attention: ``"sparse"`` (NLSA, default), ``"dense"``
            (:class:`DenseMatchAttention`: the same embeddings and parameters,
            softmax over all positions) or ``"none"`` (the EDSR backbone alone,
            ``A * (9 F E + E + F^2 + F)`` fewer parameters): the three columns
            "NLSA", "Non-Local" and "baseline" of the NLSN supplement's Table 1.

    Layers (checkpoint keys): ``sub_mean`` / ``add_mean`` (:class:`MeanShift`,
    DIV2K mean, no weights); ``head`` (conv 3x3, 3 -> F); ``body``
    (``nn.Sequential`` of the NLSAs and residual blocks in their order, like
    the official code: ``body.0`` is the first NLSA, ``body.1`` ... ``body.k``
    the first ``k`` blocks, ``body.k+1`` the second NLSA, ...); ``body_conv``
    (conv 3x3, F -> F, before the long skip); ``upsampler``
    (:class:`~srlib.models.edsr.Upsampler`); ``tail`` (conv 3x3, F -> 3).

    Randomness.  Each NLSA keeps its own seed ``seed + i``.  In eval mode every
    forward hashes with rotations drawn afresh from that seed: two forwards on
    the same input give identical outputs.  In training mode each NLSA draws new
    rotations at every call from a generator seeded with its seed at
    construction: every step sees new buckets, and the same seed replays the
    same sequence (:meth:`reset_attention_generators`).  The generators' states
    are not saved in checkpoints.

    Forward ``forward(lr, return_details=False)``:
        float32 RGB in [0, 1] ``(N, 3, h, w)``, any ``h, w >= 1`` ->
        ``(N, 3, s*h, s*w)``, not clamped.  With ``return_details=True`` the pair
        ``(sr, details)``, ``details`` a list with one
        :class:`~srlib.attention.sparse.SparseAttentionDetails` per NLSA in
        body order (bucket ``codes`` ``(N, n_rounds, h, w)``, per-round outputs
        and weights, the rotations used); the output is the same as without
        details.  The work of an NLSA grows like ``n_rounds * h*w * 3 *
        chunk_size`` and its memory linearly in ``h*w`` (rounds and blocks of
        chunks are processed one after another; see
        :func:`~srlib.attention.sparse.non_local_sparse_attention`).

    Raises:
        ValueError: unsupported scale or option values (construction; the
            message names the option); input that is not ``(N, 3, h, w)``
            (forward).
        TypeError: non-float input (forward).

    Source: Mei et al., CVPR 2021; layer layout from the official code (see the
    module docstring for where this module differs).
    """

    def __init__(
        self,
        scale: int,
        n_feats: int = 32,
        n_blocks: int = 8,
        attention_every: int = 4,
        reduction: int = 4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        n_rounds: int = 4,
        n_buckets: int | None = None,
        res_scale: float = 0.1,
        attention_res_scale: float = 1.0,
        seed: int = 0,
        attention: str = "sparse",
    ):
        super().__init__()
        check_scale("nlsn", scale, NLSN_SCALES)
        n_feats = _integer("n_feats", n_feats, minimum=1)
        n_blocks = _integer("n_blocks", n_blocks, minimum=0)
        attention_every = _integer("attention_every", attention_every, minimum=1)
        reduction = _integer("reduction", reduction, minimum=1)
        if n_feats // reduction < 1:
            raise ValueError(
                f"reduction must be at most n_feats (the match embedding has n_feats // reduction "
                f"channels), got n_feats={n_feats}, reduction={reduction}"
            )
        chunk_size = _integer("chunk_size", chunk_size, minimum=1)
        n_rounds = _integer("n_rounds", n_rounds, minimum=1)
        if n_buckets is not None and (
            isinstance(n_buckets, bool) or not isinstance(n_buckets, numbers.Integral)
            or n_buckets < 2 or n_buckets % 2
        ):
            raise ValueError(
                f"n_buckets must be None (NLSN's rule from the map size) or an even integer >= 2 "
                f"(spherical LSH splits the buckets into +/- pairs), got {n_buckets!r}"
            )
        res_scale = _positive_real("res_scale", res_scale, "0.1 in NLSN")
        attention_res_scale = _positive_real("attention_res_scale", attention_res_scale, "0.1 in NLSN's code")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < _MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, 2**63 - 1024), got {seed!r}")
        seed = int(seed)
        if attention not in ATTENTION_KINDS:
            raise ValueError(
                f"attention must be one of {', '.join(map(repr, ATTENTION_KINDS))} "
                f"(NLSA, dense attention with the same embeddings, or none), got {attention!r}"
            )
        self.model_name = "nlsn"
        self.scale = scale
        self.options = {
            "n_feats": n_feats, "n_blocks": n_blocks, "attention_every": attention_every,
            "reduction": reduction, "chunk_size": chunk_size, "n_rounds": n_rounds,
            "n_buckets": None if n_buckets is None else int(n_buckets), "res_scale": res_scale,
            "attention_res_scale": attention_res_scale, "seed": seed, "attention": attention,
        }
        positions = attention_positions(n_blocks, attention_every)
        self.attention_after_blocks = positions if attention != "none" else ()
        attention_class = DenseMatchAttention if attention == "dense" else NonLocalSparseAttention

        def nlsa(index: int) -> list[nn.Module]:
            if attention == "none":
                return []
            return [attention_class(
                n_feats, reduction=reduction, chunk_size=chunk_size, n_rounds=n_rounds,
                n_buckets=n_buckets, res_scale=attention_res_scale, seed=seed + index,
            )]

        layers: list[nn.Module] = nlsa(0)
        for block in range(1, n_blocks + 1):
            layers.append(ResidualBlock(n_feats, res_scale))
            if block % attention_every == 0:
                layers.extend(nlsa(block // attention_every))

        self.sub_mean = MeanShift(DIV2K_RGB_MEAN, sign=-1)
        self.head = conv3x3(3, n_feats)
        self.body = nn.Sequential(*layers)
        self.body_conv = conv3x3(n_feats, n_feats)
        self.upsampler = Upsampler(n_feats, scale)
        self.tail = conv3x3(n_feats, 3)
        self.add_mean = MeanShift(DIV2K_RGB_MEAN, sign=+1)

    def attention_modules(self) -> list[NonLocalSparseAttention]:
        """The NLSA modules in body order (``len == 1 + n_blocks // attention_every``).

        For plots: register forward hooks on them, or call one directly on a
        feature map with ``return_details=True`` to get its bucket codes; or
        use ``model(lr, return_details=True)`` for all of them at once.
        """
        return [m for m in self.body if isinstance(m, NonLocalSparseAttention)]

    def reset_attention_generators(self) -> None:
        """Re-seed every NLSA's training-mode generator with its seed (``seed + i``), replaying the rotations."""
        for module in self.attention_modules():
            module.reset_generator()

    def forward(
        self, lr: torch.Tensor, return_details: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[SparseAttentionDetails]]:
        check_lr_batch(lr)
        shallow = self.head(self.sub_mean(lr))  # (N, F, h, w), x0
        x = shallow
        details: list[SparseAttentionDetails] = []
        for layer in self.body:
            if return_details and isinstance(layer, NonLocalSparseAttention):
                x, layer_details = layer(x, return_details=True)  # (N, F, h, w)
                details.append(layer_details)
            else:
                x = layer(x)  # (N, F, h, w)
        features = self.body_conv(x) + shallow  # (N, F, h, w), long skip connection
        sr = self.add_mean(self.tail(self.upsampler(features)))  # (N, 3, s*h, s*w)
        if return_details:
            return sr, details
        return sr
