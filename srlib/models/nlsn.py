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

Each attention block maps ``(N, F, h, w)`` to ``(N, F, h, w)``:
``x + attention_res_scale * attention(x)`` (:class:`~srlib.models.blocks.ResidualAttention`),
where ``attention`` is any registered attention of kind ``"in_scale"``
(option ``attention``, default ``"nlsa"``; ``attention_options`` are its
options, e.g. ``{"n_rounds": 2}``; ``"none"`` for the backbone alone).  NLSA
(:class:`~srlib.attention.sparse.NonLocalSparseAttention`) has a 3x3 conv
``F -> F // reduction`` query/key embedding and a 1x1 conv ``F -> F`` value embedding; positions are hashed into buckets by
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


import torch
from torch import nn

from srlib.attention._common import positive_int, positive_real
from srlib.models.blocks import (
    DIV2K_RGB_MEAN,
    MeanShift,
    ResidualAttention,
    ResidualBlock,
    Upsampler,
    attention_slot,
    conv3x3,
)
from srlib.models.registry import check_lr_batch, check_scale, register_model, rename_state_keys

__all__ = [
    "NLSN",
    "NLSN_OFFICIAL_OPTIONS",
    "NLSN_SCALES",
    "attention_positions",
    "upgrade_nlsn_checkpoint",
]

NLSN_SCALES = (2, 3, 4)

# The released NLSN (official code's defaults): EDSR with 32 residual blocks of 256 channels,
# res_scale 0.1 passed to the blocks and to the 5 NLSAs, query/key embedding 256 -> 64 channels,
# chunks of 144 positions, 4 hashing rounds, bucket count from the map size.
# 41,796,163 parameters at x2, 44,746,563 at x3, 44,156,483 at x4 ("44M").
NLSN_OFFICIAL_OPTIONS = {
    "n_feats": 256,
    "n_blocks": 32,
    "attention_every": 8,
    "res_scale": 0.1,
    "attention": "nlsa",
    "attention_options": {"reduction": 4, "chunk_size": 144, "n_rounds": 4, "n_buckets": None},
    "attention_res_scale": 0.1,
}

# The attention kinds an NLSN body can hold: maps in, maps of the same size out.
_BODY_KINDS = ("in_scale",)


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
    n_blocks = positive_int("n_blocks", n_blocks, 0)
    attention_every = positive_int("attention_every", attention_every, 1)
    return tuple(range(0, n_blocks + 1, attention_every))


# Checkpoints written before the attention registry (srlib 0.1 layout): NLSN's own options for
# the attention, "sparse" / "dense" / "none" for its kind, and the NLSA layers at the top level of
# each body entry.
_LEGACY_ATTENTION_NAMES = {"sparse": "nlsa", "dense": "nlsa_dense", "none": "none"}
_LEGACY_ATTENTION_OPTIONS = ("reduction", "chunk_size", "n_rounds", "n_buckets")
_LEGACY_LAYERS = {"match_embedding": "attention.query_key_embed.0", "assembly_embedding": "attention.value_embed.0"}


def upgrade_nlsn_checkpoint(options: dict, state) -> tuple[dict, dict]:
    """Map an NLSN checkpoint of the pre-registry layout onto today's; current ones pass unchanged.

    The mapping (documented here and tested on the shipped ``data/checkpoints/nlsn_x2.pt``):

    * options ``attention="sparse" | "dense" | "none"`` -> ``"nlsa" | "nlsa_dense" | "none"``;
      ``reduction``, ``chunk_size``, ``n_rounds``, ``n_buckets`` -> ``attention_options``;
    * weights ``body.<i>.match_embedding.<p>`` -> ``body.<i>.attention.query_key_embed.0.<p>`` and
      ``body.<i>.assembly_embedding.<p>`` -> ``body.<i>.attention.value_embed.0.<p>``
      (the NLSA's residual moved into :class:`~srlib.models.blocks.ResidualAttention`).

    Args:
        options: the checkpoint's ``model_options``.
        state: its ``model_state``.

    Returns:
        ``(options, state)`` in today's layout (new dicts; tensors are shared).

    Raises:
        ValueError: a legacy ``attention`` value that has no counterpart.
    """
    options, state = dict(options), dict(state)
    if "attention_options" in options or options.get("attention") not in _LEGACY_ATTENTION_NAMES:
        return options, state
    options["attention"] = _LEGACY_ATTENTION_NAMES[options["attention"]]
    options["attention_options"] = {
        key: options.pop(key) for key in _LEGACY_ATTENTION_OPTIONS if key in options
    }
    return options, rename_state_keys(
        state, r"^(body\.\d+)\.(match_embedding|assembly_embedding)\.(weight|bias)$",
        lambda match: f"{match.group(1)}.{_LEGACY_LAYERS[match.group(2)]}.{match.group(3)}",
    )


@register_model(  # the class is its own builder: its __init__ options are the registry options
    "nlsn",
    presets={
        "quick": {"model_options": {"n_feats": 32, "n_blocks": 8, "attention_every": 4}},
        "full": {"model_options": {"n_feats": 64, "n_blocks": 16, "attention_every": 4}},
        # Sparse attention runs on whole validation images (its cost is linear in their size), so
        # the smoke run scores Set5 only.
        "smoke": {
            "model_options": {"n_feats": 16, "n_blocks": 2, "attention_every": 2},
            "final_sets": ["Set5"],
        },
    },
    upgrade=upgrade_nlsn_checkpoint,
)
class NLSN(nn.Module):
    """Non-Local Sparse Network: EDSR with attention blocks at the start of the body and after every k-th residual block.

    Args:
        scale: 2, 3 or 4.
        n_feats: feature channels ``F`` (256 in NLSN; 32 by default here).
        n_blocks: residual blocks ``B`` (32 in NLSN; 8 here); 0 leaves a
            single attention block in the body.
        attention_every: ``k``, an attention block after every ``k``-th residual
            block (8 in NLSN; 4 here); see :func:`attention_positions`.  There
            are ``1 + B // k`` attention blocks.
        res_scale: factor of the residual branch of every residual block (0.1,
            as the official code uses for its 256-channel model).
        attention: the registered attention of every attention block, any of
            kind ``"in_scale"`` (:func:`srlib.attention.available_attention`):
            ``"nlsa"`` (default, NLSN's sparse attention), ``"nlsa_dense"``
            (the same embeddings and parameters, softmax over all positions),
            ``"non_local"``, a plugin's...; or ``"none"`` (the EDSR backbone
            alone).  ``"nlsa"``, ``"nlsa_dense"`` and ``"none"`` are the
            columns "NLSA", "Non-Local" and "baseline" of the NLSN supplement's Table 1.
        attention_options: options of that attention (None: its defaults; for
            NLSA ``reduction=4``, ``chunk_size=144``, ``n_rounds=4``,
            ``n_buckets=None``, i.e. NLSN's rule
            ``min(L // 144 + (L // 144) % 2, 128)`` from the ``L = h*w`` LR positions).
            ``seed`` is not one of them: see ``seed``.
        attention_res_scale: factor of the attention branch of every attention
            block (1.0; the official code passes its ``res_scale``, 0.1).
        seed: integer in ``[0, 2**63 - 1024)``; when the attention takes a
            ``seed`` option (NLSA does), the ``i``-th block (body order, from 0)
            hashes with seed ``seed + i`` (see "Randomness").

    Layers (checkpoint keys): ``sub_mean`` / ``add_mean`` (:class:`MeanShift`,
    DIV2K mean, no weights); ``head`` (conv 3x3, 3 -> F); ``body``
    (``nn.Sequential`` of the attention blocks and residual blocks in their
    order, like the official code: ``body.0`` is the first attention block
    (:class:`~srlib.models.blocks.ResidualAttention`, its module under
    ``body.0.attention``), ``body.1`` ... ``body.k`` the first ``k`` residual
    blocks, ``body.k+1`` the second attention block, ...); ``body_conv`` (conv
    3x3, F -> F, before the long skip); ``upsampler``
    (:class:`~srlib.models.blocks.Upsampler`); ``tail`` (conv 3x3, F -> 3).

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
        ``(sr, details)``, ``details`` a list with the details of every
        attention block in body order (for NLSA a
        :class:`~srlib.attention.sparse.SparseAttentionDetails`: bucket
        ``codes`` ``(N, n_rounds, h, w)``, per-round outputs and weights, the
        rotations used); the output is the same as without details.  The work
        of an NLSA grows like ``n_rounds * h*w * 3 * chunk_size`` and its memory
        linearly in ``h*w`` (see
        :func:`~srlib.attention.sparse.non_local_sparse_attention`).

    Raises:
        ValueError: unsupported scale or option values (construction; the
            message names the option); an attention that is not registered or
            not of kind ``"in_scale"`` (the message lists those that fit); input
            that is not ``(N, 3, h, w)`` or holds non-finite pixels (forward).
        TypeError: attention options the attention does not take; non-float input (forward).

    Source: Mei et al., CVPR 2021; layer layout from the official code (see the
    module docstring for where this module differs).
    """

    def __init__(
        self,
        scale: int,
        n_feats: int = 32,
        n_blocks: int = 8,
        attention_every: int = 4,
        res_scale: float = 0.1,
        attention: str = "nlsa",
        attention_options: dict | None = None,
        attention_res_scale: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        check_scale("nlsn", scale, NLSN_SCALES)
        n_feats = positive_int("n_feats", n_feats, 1)
        n_blocks = positive_int("n_blocks", n_blocks, 0)
        attention_every = positive_int("attention_every", attention_every, 1)
        res_scale = positive_real("res_scale", res_scale, "0.1 in NLSN")
        attention_res_scale = positive_real("attention_res_scale", attention_res_scale, "0.1 in NLSN's code")
        build = attention_slot(attention, attention_options, n_feats, seed, _BODY_KINDS)
        self.scale = scale
        positions = attention_positions(n_blocks, attention_every)
        self.attention_after_blocks = positions if build is not None else ()

        def attention_block(index: int) -> list[nn.Module]:
            return [] if build is None else [ResidualAttention(build(index), attention_res_scale)]

        layers: list[nn.Module] = attention_block(0)
        for block in range(1, n_blocks + 1):
            layers.append(ResidualBlock(n_feats, res_scale))
            if block % attention_every == 0:
                layers.extend(attention_block(block // attention_every))

        self.sub_mean = MeanShift(DIV2K_RGB_MEAN, sign=-1)
        self.head = conv3x3(3, n_feats)
        self.body = nn.Sequential(*layers)
        self.body_conv = conv3x3(n_feats, n_feats)
        self.upsampler = Upsampler(n_feats, scale)
        self.tail = conv3x3(n_feats, 3)
        self.add_mean = MeanShift(DIV2K_RGB_MEAN, sign=+1)

    def attention_modules(self) -> list[nn.Module]:
        """The attention modules in body order (``len == 1 + n_blocks // attention_every``, 0 without attention).

        For plots: register forward hooks on them, or call one directly on a
        feature map with ``return_details=True`` to get its bucket codes; or
        use ``model(lr, return_details=True)`` for all of them at once.
        """
        return [m.attention for m in self.body if isinstance(m, ResidualAttention)]

    def reset_attention_generators(self) -> None:
        """Re-seed every NLSA's training-mode generator with its seed (``seed + i``), replaying the rotations."""
        for module in self.attention_modules():
            if hasattr(module, "reset_generator"):
                module.reset_generator()

    def forward(self, lr: torch.Tensor, return_details: bool = False):
        check_lr_batch(lr)
        shallow = self.head(self.sub_mean(lr))  # (N, F, h, w), x0
        x = shallow
        details = []
        for layer in self.body:
            if return_details and isinstance(layer, ResidualAttention):
                x, layer_details = layer(x, return_details=True)  # (N, F, h, w)
                details.append(layer_details)
            else:
                x = layer(x)  # (N, F, h, w)
        features = self.body_conv(x) + shallow  # (N, F, h, w), long skip connection
        sr = self.add_mean(self.tail(self.upsampler(features)))  # (N, 3, s*h, s*w)
        if return_details:
            return sr, details
        return sr

