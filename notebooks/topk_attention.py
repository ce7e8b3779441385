"""Top-k attention: each query keeps only the k keys it matches best (a prototype attention plug-in).

This file is the whole of a new attention variant for srlib, written the way notebook 08
shows: one module class, its float64 loop version, one ``@register_attention`` line.
Loading the file (``srlib.plugins.load_plugins(["notebooks/topk_attention.py"])``, or
``srlib train --plugin notebooks/topk_attention.py``) registers it as ``"topk"``; from then
on ``check_attention("topk")``, ``srlib bench attention`` and
``srlib train --model nlsn --option attention=topk`` use it like any built-in mechanism.

The mechanism.  NLSA (NLSN, Mei et al., CVPR 2021) keeps, for each query, the keys that a
random hash put near it; top-k attention keeps the ``k`` keys with the largest scores, found
exactly.  Everything else is NLSA's, so the two differ only in *how the keys are chosen*:
one shared 3x3 query/key embedding ``C -> C // reduction``, keys L2-normalised (norm clamped
at 5e-5), raw queries, no ``1/sqrt(d)`` factor, a 1x1 value embedding ``C -> C``::

    s_ij = q_i . k_j / max(||k_j||, 5e-5)                 score of key j for query i
    T_i  = the k largest of s_i1 ... s_iL                 (every key tied with the k-th is kept too)
    z_i  = sum_{j in T_i} exp(s_ij) / sum_{l in T_i} exp(s_il) * v_j

The price: finding the k best keys needs all ``L^2`` scores, so time and memory are those of
dense attention (quadratic), while the softmax and the value sum touch only ``k`` keys per
query.  It answers a question NLSA raises: is attention that looks at only a few keys worse
because it looks at few keys, or because hashing picks the wrong ones?
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from srlib.attention import check_feature_map, register_attention
from srlib.attention._common import embedding, guard_memory, positive_int

KEY_NORM_EPS = 5e-5  # as NLSA: a zero key stays zero instead of becoming NaN


@dataclass
class TopKDetails:
    """What :class:`TopKAttention` computed, for plots.

    Attributes:
        weights: ``(N, L, L)`` softmax weights, zero outside each query's kept keys.
        kept: ``(N, L)`` number of keys each query kept (``k``, more on ties).
    """

    weights: torch.Tensor
    kept: torch.Tensor


def topk_loops(module: "TopKAttention", x: torch.Tensor) -> torch.Tensor:
    """The equations of the module docstring evaluated literally, query by query (float64, small maps).

    Args:
        module: a :class:`TopKAttention` (its weights are used).
        x: ``(N, C, H, W)`` float64 map.

    Returns:
        ``(N, C, H, W)``: the module's output, computed with explicit loops.
    """
    n, c, h, w = x.shape
    match = module.query_key_embed(x).flatten(2)  # (N, C_e, L), queries and keys
    values = module.value_embed(x).flatten(2)  # (N, C, L)
    length = h * w
    out = torch.zeros(n, c, length, dtype=x.dtype)
    for b in range(n):
        for i in range(length):
            query = match[b, :, i]  # (C_e,)
            scores = []
            for j in range(length):
                key = match[b, :, j]
                unit_key = key / max(float(key.norm()), KEY_NORM_EPS)  # k_j / max(||k_j||, 5e-5)
                scores.append(float(query @ unit_key))  # s_ij
            threshold = sorted(scores, reverse=True)[min(module.k, length) - 1]  # the k-th largest
            kept = [j for j in range(length) if scores[j] >= threshold]  # T_i, ties included
            top = max(scores[j] for j in kept)
            total = sum(torch.exp(torch.tensor(scores[j] - top, dtype=x.dtype)) for j in kept)
            for j in kept:
                out[b, :, i] += torch.exp(torch.tensor(scores[j] - top, dtype=x.dtype)) / total * values[b, :, j]
    return out.reshape(n, c, h, w)


@register_attention(
    "topk", kind="in_scale", loops=topk_loops, guarded=True,
    bench={"topk_k16": {"k": 16}},
    test_options=[{"k": 3}],
)
class TopKAttention(nn.Module):
    """Top-k attention: a softmax over the ``k`` best-scoring keys of each query (NLSA's embeddings).

    Args:
        channels: ``C`` of the input map.
        reduction: the query/key embedding has ``C // reduction`` channels (4, as NLSA).
        k: keys kept per query (16; all of them when the map has fewer positions).
        activation: ``"none"`` (as NLSA) or ``"prelu"`` after each embedding.
        max_attention_bytes: limit for the ``(N, L, L)`` scores and weights (None: half
            the free memory; ``math.inf``: off).

    Layers (checkpoint keys): ``query_key_embed`` (3x3 conv ``C -> C // reduction``),
    ``value_embed`` (1x1 conv ``C -> C``), the same as NLSA's.

    Forward ``forward(x, return_details=False)``: ``(N, C, H, W)`` -> ``(N, C, H, W)``;
    with ``return_details=True`` also a :class:`TopKDetails`.

    Raises:
        ValueError: bad options; an input that is not ``(N, C, H, W)`` of the module's
            dtype and device.
        AttentionMemoryError: the ``(N, L, L)`` scores would exceed the memory limit.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        k: int = 16,
        activation: str = "none",
        max_attention_bytes: float | None = None,
    ):
        super().__init__()
        self.channels = positive_int("channels", channels)
        self.reduction = positive_int("reduction", reduction)
        if self.channels // self.reduction < 1:
            raise ValueError(f"channels // reduction must be at least 1, got {channels} // {reduction}")
        self.k = positive_int("k", k)
        self.max_attention_bytes = max_attention_bytes
        self.query_key_embed = embedding(channels, channels // reduction, activation, kernel_size=3)
        self.value_embed = embedding(channels, channels, activation)

    def forward(self, x: torch.Tensor, return_details: bool = False):
        check_feature_map(self, x, self.channels)
        n, c, h, w = x.shape
        length = h * w
        guard_memory(
            2 * n * length * length * x.element_size(), x.device, self.max_attention_bytes,
            f"top-k attention on {n} map(s) of {h}x{w} pixels for its ({n}, {length}, {length}) scores",
            "Use smaller tiles (`srlib eval --tile T`) or raise max_attention_bytes.",
        )
        match = self.query_key_embed(x).flatten(2).transpose(1, 2)  # (N, L, C_e), queries
        keys = match / match.norm(dim=-1, keepdim=True).clamp_min(KEY_NORM_EPS)  # (N, L, C_e), unit keys
        values = self.value_embed(x).flatten(2).transpose(1, 2)  # (N, L, C)
        scores = match @ keys.transpose(1, 2)  # (N, L, L), s_ij
        kth = scores.topk(min(self.k, length), dim=-1).values[..., -1:]  # (N, L, 1), k-th largest score
        scores = scores.masked_fill(scores < kth.detach(), float("-inf"))  # keep T_i (ties included)
        weights = scores.softmax(dim=-1)  # (N, L, L), zero outside T_i
        out = (weights @ values).transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W), z_i
        if return_details:
            return out, TopKDetails(weights=weights, kept=(weights > 0).sum(dim=-1))
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, k={self.k}"
