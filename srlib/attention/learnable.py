"""Global Learnable Attention (GLA): sparse attention whose similarity is partly learned (DLSN).

Source: J.-N. Su, M. Gan, G.-Y. Chen, J.-L. Yin, C. L. P. Chen, "Global
Learnable Attention for Single Image Super-Resolution" (DLSN), eq. 8-18 and
Algorithm 1; official code ``laoyangui/DLSN`` (``src/model/attention.py``,
class ``GLA``).

The idea.  Non-local attention weighs a key by a *fixed* similarity, the dot
product of embeddings (eq. 10)::

    s_f(x_i, x_j) = phi_q(x_i)^T phi_k(x_j)

and so always prefers the textures that look most alike, which is not always
the texture that helps most (DLSN Fig. 1: a degraded texture matches another
degraded texture better than the clean one it should borrow from).  GLA adds a
learned term (eq. 9)::

    s(x_i, x_j) = s_f(x_i, x_j) + s_l^j(x_i)

computed by a two-layer network (eq. 11), and attends only inside the chunks
of super-bit LSH buckets (eq. 12-16; :mod:`srlib.attention.lsh`), with the
hash rounds combined (eq. 17-18).  Everything except the score is NLSA's
machinery: this module calls :func:`srlib.attention.sparse.non_local_sparse_attention`
with a learned score term, so there is one sort / chunk / un-sort path.

Three forms of ``s_l`` (``learned_score``):

* ``"paper"`` - eq. 11 and Algorithm 1 line 24 read as written: a network of
  the **query's** features ``phi_l(x_i)`` that outputs one score per key slot
  of the query's window (``3m`` slots for chunk size ``m`` and one neighbour
  chunk on each side).  It can express "this query prefers keys in slot j of
  its window".
* ``"official"`` - what the released code computes: a network of the
  **key's** features (``conv_assembly_fc`` then ``fc``) that outputs ``m``
  numbers, of which the query in slot ``t`` of its chunk reads number ``t``.
  It can express "this key is worth more (or less) to everybody", modulated by
  the query's slot.
* ``"none"`` - no learned term: GLA is NLSA with DLSN's embeddings and hash.

What a learned term can and cannot express.  The window of a query is a run of
*sorted* positions: slot ``j`` is "the ``j``-th position after sorting by hash
code", an order that changes with every draw of the projections and says
nothing stable about where the key is in the image or what it contains.  A
score indexed by slot is therefore a positional bias over an arbitrary order.
In the ``"paper"`` form the query can only say how much it likes each slot,
not which content it wants; over random draws such a bias can only learn a
preference for slots near its own (the own chunk comes first in the window,
and its members share the query's bucket) and a per-query temperature-like
shift.  In the ``"official"`` form the key's content does enter, so the term
can learn a content-dependent "how useful is this key" prior, but the query's
part of the interaction is again only its slot.  Neither form computes a
similarity between the query's and the key's content beyond ``s_f``.  Both tie
the weights to the chunk size: the output layer has ``3m`` (paper) or ``m``
(official) units, so a model cannot run with another chunk size than it was
trained with (loading a checkpoint into a module of another chunk size raises
``ValueError``).  Notebook ``06_learnable_similarity_gla.ipynb`` measures what
each form does.

Round weights (``round_weighting``): ``"logsumexp"`` - the official code,
``w_r = softmax_r(lse_r)`` as in NLSN; ``"score_sum"`` - eq. 18 literally,
``w_r = S_r / sum_r' S_r'`` with ``S_r = sum_{j in window_r} s(x_i, x_j)``.
Eq. 18 is only a convex weighting when all ``S_r`` have one sign: scores are
unbounded dot products, and with mixed signs a weight can be negative or
larger than 1, and near ``sum_r' S_r' = 0`` the output blows up
(``tests/test_attention_learnable.py`` shows both); a query whose scores are
all exactly 0 (an all-zero query after the ReLU embedding, with no learned
term) gets 0 / 0 = NaN.  The logsumexp weights have none of these problems.

Residual.  None inside: the model adds ``x + res_scale * GLA(x)``
(:mod:`srlib.models.dlsn`; the official GLA adds its input with res_scale 1
inside the module).

Differences from the official code, besides the residual: the hash draws
come from an explicit seed or generator (the official code redraws from the
global RNG at every forward, test time too, and only runs on a CUDA device), the
padded slots are masked instead of repeated, fewer than three chunks do not
repeat keys, and the sort is stable - the same conventions as
:mod:`srlib.attention.sparse`.
"""

from __future__ import annotations

import torch
from torch import nn

from srlib.attention._common import choice, embedding, positive_int
from srlib.attention.lsh import bucket_count
from srlib.attention.registry import register_attention
from srlib.attention.sparse import (
    LEARNED_FORMS,
    ROUND_WEIGHTINGS,
    NonLocalSparseAttention,
    SparseAttentionDetails,
    non_local_sparse_attention,
    sparse_attention_multiply_adds,
)

__all__ = ["DLSN_CHUNK_SIZE", "GlobalLearnableAttention", "learned_score_width"]

#: Chunk size the DLSN README trains with (the class default in the code says 144).
DLSN_CHUNK_SIZE = 128


def learned_score_width(form: str, chunk_size: int, chunks_before: int = 1, chunks_after: int = 1) -> int:
    """Outputs of the learned scorer: ``(1 + before + after) * m`` for ``"paper"``, ``m`` for ``"official"``, 0 for ``"none"``.

    Raises:
        ValueError: an unknown form or a non-positive chunk size.
    """
    form = choice("learned_score", form, LEARNED_FORMS)
    chunk_size = positive_int("chunk_size", chunk_size)
    if form == "none":
        return 0
    return (1 + chunks_before + chunks_after) * chunk_size if form == "paper" else chunk_size


def gla_multiply_adds(shape: tuple[int, int, int, int], options: dict) -> int:
    """Multiply-adds of one :class:`GlobalLearnableAttention` forward pass on an ``(N, C, H, W)`` map (DLSN).

    With ``L = H W``, ``C_e = C // reduction``, ``P`` learned scores per position
    (:func:`learned_score_width`: ``3m`` for ``"paper"``, ``m`` for
    ``"official"``, none for ``"none"``) and ``hidden`` units:

    * embeddings, 3x3 convolutions: ``phi_q = phi_k`` ``C -> C_e`` (eq. 10) and
      ``phi_v`` ``C -> C`` (eq. 8), ``N L (9 C C_e + 9 C^2)``;
    * the learned score ``s_l`` (eq. 11): ``phi_l`` a 3x3 convolution ``C -> C``,
      then ``W_1`` (``C -> hidden``) and ``W_2`` (``hidden -> P``):
      ``N L (9 C^2 + C hidden + hidden P)`` (absent for ``"none"``);
    * per round, the super-bit projection (eq. 12) and the attention inside the
      chunks (eq. 14-16) with scores ``s_f + s_l`` (eq. 9; ``s_f`` of eq. 10 is
      left out with ``fixed_score=False``):
      :func:`~srlib.attention.sparse.sparse_attention_multiply_adds`.
      Adding ``s_l`` and weighting the rounds (eq. 17-18) are element-wise.
    """
    n, c, h, w = shape
    c_e = c // options["reduction"]
    length = h * w
    width = learned_score_width(options["learned_score"], options["chunk_size"])  # P
    hidden = width if options["hidden"] is None else options["hidden"]
    embeddings = n * length * (9 * c * c_e + 9 * c * c)  # phi_q = phi_k: 3x3 C -> C_e; phi_v: 3x3 C -> C
    learned = n * length * (9 * c * c + c * hidden + hidden * width) if width else 0  # eq. 11
    buckets = bucket_count(length, options["chunk_size"], n_buckets=options["n_buckets"], hashing=options["hashing"])
    return embeddings + learned + sparse_attention_multiply_adds(
        n, length, c_e, c, n_rounds=options["n_rounds"], chunk_size=options["chunk_size"], n_buckets=buckets,
        hashing=options["hashing"], fixed_scores=options["fixed_score"],
    )


@register_attention(
    "gla", kind="in_scale", loops="srlib.attention.loops:gla_loops",
    bench={"gla_r3": {}, "gla_official_r3": {"learned_score": "official"}},
    multiply_adds=gla_multiply_adds,
    test_options=[
        {"reduction": 2, "chunk_size": 8, "n_rounds": 2},
        {"reduction": 2, "chunk_size": 7, "n_rounds": 3, "n_buckets": 5, "learned_score": "official"},
        {"reduction": 2, "chunk_size": 8, "fixed_score": False, "superbit_mode": "official", "n_buckets": 3},
        {"reduction": 2, "chunk_size": 6, "learned_score": "none", "hashing": "spherical"},
        {"reduction": 2, "chunk_size": 8, "n_rounds": 2, "round_weighting": "score_sum"},
    ],
)
class GlobalLearnableAttention(NonLocalSparseAttention):
    """DLSN's GLA: super-bit LSH buckets, scores ``q . k_hat + s_l`` (eq. 9-11), rounds combined (eq. 17-18).

    ``out = sparse_attention(q, q, v, s_l)`` with ``q = query_key_embed(x)``
    (queries and, normalised, keys: eq. 10 with shared ``phi_q = phi_k``,
    Algorithm 1 line 2), ``v = value_embed(x)`` (line 18) and ``s_l`` from
    ``learned_embed`` and ``learned_scorer`` (line 17 and 24, eq. 11).  No
    residual inside.  See the module docstring for the three forms of ``s_l``.

    Args:
        channels: C, channels of the input map.
        reduction: the query/key embedding has ``C // reduction`` channels (DLSN: 4).
        chunk_size: ``m``, positions per chunk (DLSN README: 128).
        n_rounds: hash rounds (DLSN README: 3).
        n_buckets: buckets per round (>= 1), or None for the official rule
            ``min(L // m + (L // m) % 2, 128)``, at least 2.
        seed: integer seed of the hash projections (the randomness policy of
            :class:`~srlib.attention.sparse.NonLocalSparseAttention`).
        activation: after each embedding: ``"relu"`` (DLSN), ``"prelu"`` or ``"none"``.
        hashing: ``"superbit"`` (DLSN) or ``"spherical"`` (NLSN's hash).
        superbit_mode: how the super-bit directions are drawn when ``b > C // reduction``
            (:data:`~srlib.attention.lsh.SUPERBIT_MODES`; ``"official"`` reproduces the DLSN code).
        learned_score: ``"paper"``, ``"official"`` or ``"none"``.
        fixed_score: include ``s_f = q . k_hat``; False leaves ``s_l`` alone
            (not reported in the paper; needs a learned form).
        round_weighting: ``"logsumexp"`` (official code) or ``"score_sum"`` (eq. 18).
        hidden: hidden units of the learned scorer; None: as many as its
            outputs (eq. 11's ``W_2`` is square; the official code's too).

    Layers (the names are the checkpoint keys):
        ``query_key_embed`` - 3x3 conv ``C -> C // reduction`` [+ activation] (``conv_match``);
        ``value_embed`` - 3x3 conv ``C -> C`` [+ activation] (``conv_assembly``);
        ``learned_embed`` - 3x3 conv ``C -> C`` [+ activation] (``conv_assembly_fc``, ``phi_l`` of eq. 11);
        ``learned_scorer`` - ``Sequential(Linear(C, hidden), ReLU, Linear(hidden, P))``
        with ``P = 3m`` (paper) or ``m`` (official) (``fc``; ``W_1, b_1, W_2, b_2`` of eq. 11).
        The last two exist only when ``learned_score`` is not ``"none"``.

    Forward ``forward(x, return_details=False, *, generator=None)``: ``x`` float
    ``(N, C, H, W)``, any size; returns ``(N, C, H, W)``, with
    ``return_details=True`` also a :class:`~srlib.attention.sparse.SparseAttentionDetails`.
    Randomness as :class:`~srlib.attention.sparse.NonLocalSparseAttention`
    (explicit ``generator``; eval mode: ``seed``; training: a module-owned generator).

    Raises:
        ValueError: bad sizes or option values; ``fixed_score=False`` with
            ``learned_score="none"``; ``superbit_mode="orthonormal"`` with more
            buckets than query/key channels (at forward; the message names the
            other modes); loading a checkpoint whose learned scorer was trained
            with another chunk size (the message names it); an input that is not
            ``(N, C, H, W)`` of the module's dtype and device.
        TypeError: a non-integer ``seed``, a non-bool ``fixed_score``.

    Source: DLSN eq. 8-18 and Algorithm 1; layer sizes from the official ``GLA``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        chunk_size: int = DLSN_CHUNK_SIZE,
        n_rounds: int = 3,
        n_buckets: int | None = None,
        seed: int = 0,
        activation: str = "relu",
        hashing: str = "superbit",
        superbit_mode: str = "superbit",
        learned_score: str = "paper",
        fixed_score: bool = True,
        round_weighting: str = "logsumexp",
        hidden: int | None = None,
    ):
        super().__init__(
            channels, reduction=reduction, chunk_size=chunk_size, n_rounds=n_rounds, n_buckets=n_buckets,
            seed=seed, activation=activation, hashing=hashing, superbit_mode=superbit_mode,
        )
        self.learned_score = choice("learned_score", learned_score, LEARNED_FORMS)
        if not isinstance(fixed_score, bool):
            raise TypeError(f"fixed_score must be True or False, got {fixed_score!r}")
        if not fixed_score and self.learned_score == "none":
            raise ValueError(
                "fixed_score=False with learned_score='none' leaves no similarity score: keep the dot product "
                "(fixed_score=True) or choose learned_score='paper' or 'official'"
            )
        self.fixed_score = fixed_score
        self.round_weighting = choice("round_weighting", round_weighting, ROUND_WEIGHTINGS)
        self.score_width = learned_score_width(self.learned_score, self.chunk_size)
        self.hidden = positive_int("hidden", hidden) if hidden is not None else self.score_width

        self.value_embed = embedding(channels, channels, self.activation, kernel_size=3)  # 3x3, unlike NLSN's 1x1
        if self.learned_score != "none":
            self.learned_embed = embedding(channels, channels, self.activation, kernel_size=3)
            self.learned_scorer = nn.Sequential(
                nn.Linear(channels, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.score_width)
            )

    def learned_scores(self, x: torch.Tensor) -> torch.Tensor | None:
        """``s_l`` for every position: ``(N, C, H, W)`` -> ``(N, P, H, W)`` (eq. 11), or None for ``"none"``.

        Position ``l``'s ``P`` numbers are its scores for the ``3m`` key slots of
        its window (``"paper"``, as a query) or for the ``m`` query slots of a
        chunk (``"official"``, as a key); :func:`non_local_sparse_attention`
        reads them accordingly.  ``x`` is assumed checked (see :meth:`embed`).
        """
        if self.learned_score == "none":
            return None
        features = self.learned_embed(x)  # (N, C, H, W), phi_l(x) of eq. 11
        scores = self.learned_scorer(features.permute(0, 2, 3, 1))  # (N, H, W, P), W2 relu(W1 phi_l + b1) + b2
        return scores.permute(0, 3, 1, 2)  # (N, P, H, W)

    def forward(
        self,
        x: torch.Tensor,
        return_details: bool = False,
        *,
        generator: torch.Generator | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, SparseAttentionDetails]:
        match, values = self.embed(x)  # (N, C_e, H, W) queries and keys (eq. 10); (N, C, H, W) values
        learned = self.learned_scores(x)  # (N, P, H, W) or None, s_l of eq. 11
        return non_local_sparse_attention(
            match, match, values, n_rounds=self.n_rounds, chunk_size=self.chunk_size, n_buckets=self.n_buckets,
            generator=self._rotation_source(generator), return_details=return_details, hashing=self.hashing,
            superbit_mode=self.superbit_mode, learned_scores=learned, learned_form=self.learned_score,
            fixed_scores=self.fixed_score, round_weighting=self.round_weighting,
        )  # (N, C, H, W) [, details], eq. 14 per round and eq. 17 over rounds

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        weight = state_dict.get(prefix + "learned_scorer.2.weight")
        if weight is not None and self.learned_score != "none" and weight.shape[0] != self.score_width:
            trained = weight.shape[0] if self.learned_score == "official" else weight.shape[0] // 3
            raise ValueError(
                f"this checkpoint's learned scorer ({prefix}learned_scorer) has {weight.shape[0]} outputs, i.e. it "
                f"was trained with chunk size {trained}, but this {self.learned_score!r}-form GLA has chunk size "
                f"{self.chunk_size} ({self.score_width} outputs). The learned score is indexed by slot inside a "
                f"chunk, so the chunk size is part of the weights: build the model with chunk_size={trained}"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, learned_score={self.learned_score!r}, fixed_score={self.fixed_score}, "
            f"round_weighting={self.round_weighting!r}, hidden={self.hidden}"
        )

