"""Multi-reference part-based attention (AMRSR): hierarchical patch matching over many references.

Source: M. Pesavento, M. Volino, A. Hilton, "Attention-based Multi-Reference
Learning for Image Super-Resolution", ICCV 2021, supplementary material
(Algorithm 1, Table 2 notation, Tables 6-7).  No code was released; the main
paper's eq. 1-3, which Algorithm 1 cites, are not part of the material this
course has, so every step the supplement leaves open is marked **our
reading** below, with its reason.  The building blocks come from SRNTT
(Z. Zhang, Z. Wang, Z. Lin, H. Qi, "Image Super-Resolution by Neural Texture
Transfer", CVPR 2019): normalised 3x3 patch matching, texture swapping at
three levels, the similarity as a confidence map.

The idea.  Reference-based SR borrows real high-frequency texture from other
photographs of the same content.  For every position of the LR input's
feature map, find the most similar patch among all patches of all
references, and paste that patch's high-resolution features there.  AMRSR
does this over ``N_M`` references, each split into ``N_R`` parts, with the
input split into ``N_I`` parts, so that only one (input part, reference
part) correlation block exists at a time::

    for every reference m, part r:                                     INPUTATT, Alg. 1 lines 15-20
        s(x, y; k) = q_hat(x, y) . p_hat_k                             normalised patches, a matrix product
        best_mr(x, y) = argmax_k s,   sim_mr(x, y) = max_k s
    for every input sub-vector j = 1..N_C:                              REFATT, lines 21-28
        best across the parts of m, then across the references m        (lines 9 and 12)
        by the similarity of sub-vector j of the candidates' patches
    W(x, y) = similarity of the chosen patch                           line 10, 13

The output maps (:func:`transfer_patches`): at the matching level the
chosen ``p x p`` patches (``p = 3``) of the reference's value features are
pasted around each position and every output pixel is divided by the number
of patches that cover it (its true overlap count; SRNTT averages the same
way); at the finer levels of a model, ``(p s) x (p s)`` patches with stride
``s`` (``6x6`` at ``s = 2``, ``12x12`` at ``s = 4``) of value features with ``s``
times the resolution.

Our reading, where the supplement is silent:

* **Patches.**  Reference patches are the ``p x p`` windows that lie wholly
  inside the reference (no zero-padded patches: they are not real texture);
  the input's patches are zero-padded 'same' windows, so every input position
  gets a match.  Both are L2-normalised over channels and window (norm
  clamped at :data:`PATCH_NORM_EPS`): the similarity is a cosine in [-1, 1].
* **INPUTATT** matches the input's whole feature vector (all ``N_C``
  sub-vectors together) against one part of one reference and returns, per
  position, the best patch and its similarity.
* **REFATT** compares, per input sub-vector ``j`` (the ``j``-th of ``N_C``
  equal groups of channels), the candidates chosen by INPUTATT: the score of
  a candidate is the cosine between sub-vector ``j`` of the input's patch and
  sub-vector ``j`` of the candidate's patch; the best candidate gives channel
  group ``j`` of the output.  With ``N_C = 1`` this is the candidate with the
  highest INPUTATT similarity, and the hierarchy (best in each part, then
  across parts, then across references) picks exactly the patch a single
  flat argmax over all patches of all references picks - it saves memory, it
  does not change the answer (``tests/test_attention_multi_reference.py``).
  For ``N_C > 1`` the candidates of REFATT are the winners of INPUTATT, one
  per part, so the reference parts do change the answer: more parts give each
  sub-vector more candidates to choose from (AMRSR's Table 6 reports the
  quality moving with ``N_R``).  Since a maximum of maxima is the maximum,
  the two REFATT levels (parts, then references) equal one maximum over all
  candidates, and that is how they are evaluated: a running maximum.
* **W** is the mean over sub-vectors of the chosen candidates' similarities
  (for ``N_C = 1``: SRNTT's confidence, the best cosine).
* **Parts.**  A reference of ``H_k x W_k`` positions is cut into a grid of
  ``N_R`` cells (``N_R`` a square number, or a ``(rows, cols)`` pair); a part
  owns the patch *centres* in its cell and holds the cell grown by ``p // 2``
  on every side (the overlap), so that every patch centred in the cell is
  complete and every patch of the reference belongs to exactly one part.
  The input is cut the same way into ``N_I`` parts, each grown by ``p // 2``
  so that its positions' patches are complete.  With these overlaps input
  parts never change the result, and reference parts do not change it for
  ``N_C = 1`` (tested).
* **Ties** (equal similarities, measure zero for real features) go to the
  first candidate in the order references, parts (row-major), patches
  (row-major).

Memory.  Per (input part, reference part) pair, one ``(L_i, P_r)``
correlation block (``L_i`` input positions, ``P_r`` reference patches), computed
in chunks of at most :data:`BLOCK_SCORE_ENTRIES` scores; the running best
index and similarity are ``O(N_C L)``.  The scores, which a flat search would
hold for every input position against every patch of every reference, are
therefore bounded whatever the number or size of the references: that is the
saving of the part-based mechanism (the supplement's Table 7: 40.15 GB at
``N_R = 1`` against 15.69 GB at ``N_R = 16`` on GEMAP with ``N_M = 4``).  What
still grows with the references, linearly: the normalised patches of one
reference part during the search (``C p^2`` numbers per patch), and the
unfolded patches of a whole reference in :func:`transfer_patches` (``C_v (p s)^2``
per reference position, e.g. ``36 C_v`` at ``s = 2``) and in the similarity's
gradient path (``C p^2`` per position), one reference at a time without
autograd, every reference's kept for the backward pass with it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from srlib.attention._common import (
    check_feature_map,
    embedding,
    normalize_activation,
    positive_int,
)
from srlib.attention.registry import register_attention

__all__ = [
    "BLOCK_SCORE_ENTRIES",
    "PATCH_NORM_EPS",
    "MultiReferenceAttention",
    "ReferenceMatch",
    "match_references",
    "part_grid",
    "transfer_patches",
]

#: Lower bound of a patch's L2 norm before dividing by it.
PATCH_NORM_EPS = 1e-6
#: Scores (input positions x reference patches) computed at once inside one part pair (4 MiB in float32).
BLOCK_SCORE_ENTRIES = 2**20


@dataclass
class ReferenceMatch:
    """Which reference patch each input position takes, per sub-vector, and how similar it is.

    Attributes:
        reference: ``(N, N_C, H, W)`` int64, index ``m`` of the chosen reference.
        row, col: ``(N, N_C, H, W)`` int64, centre of the chosen patch in that
            reference's feature map (``p // 2 <= row < H_m - p // 2``).
        similarity: ``(N, N_C, H, W)`` cosine of sub-vector ``j`` of the input's
            patch with sub-vector ``j`` of the chosen patch, in [-1, 1].
        weight: ``(N, 1, H, W)`` the confidence map ``W`` (mean of ``similarity``
            over sub-vectors), differentiable with respect to the features.
        patch_size: ``p``.
        reference_sizes: ``[(H_m, W_m), ...]`` of the matched feature maps.
    """

    reference: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    similarity: torch.Tensor
    weight: torch.Tensor
    patch_size: int
    reference_sizes: list


def part_grid(height: int, width: int, parts) -> list[tuple[int, int, int, int]]:
    """Cut ``height x width`` positions into a grid of ``parts`` cells: ``[(top, bottom, left, right), ...]`` row-major.

    Args:
        height, width: the size to cut (>= 1).
        parts: a square number ``n = k^2`` (``k x k`` cells) or a ``(rows, cols)`` pair.
            Cells have sizes that differ by at most one; a grid with more rows
            (columns) than the map has is reduced to one cell per row (column).

    Returns:
        Half-open bounds of each cell, covering every position exactly once.

    Raises:
        ValueError: a count that is not a square and not a pair.
    """
    if isinstance(parts, numbers.Integral) and not isinstance(parts, bool):
        side = math.isqrt(int(parts))
        if parts < 1 or side * side != parts:
            raise ValueError(f"a number of parts must be a square (1, 4, 9, 16, ...) or a (rows, cols) pair, got {parts!r}")
        rows = cols = side
    elif isinstance(parts, (tuple, list)) and len(parts) == 2:
        rows, cols = (positive_int("part rows", parts[0]), positive_int("part columns", parts[1]))
    else:
        raise ValueError(f"parts must be a square number or a (rows, cols) pair, got {parts!r}")
    height, width = positive_int("height", height), positive_int("width", width)
    rows, cols = min(rows, height), min(cols, width)
    row_edges = [round(i * height / rows) for i in range(rows + 1)]
    col_edges = [round(j * width / cols) for j in range(cols + 1)]
    return [(row_edges[i], row_edges[i + 1], col_edges[j], col_edges[j + 1]) for i in range(rows) for j in range(cols)]


def match_references(
    query: torch.Tensor,
    references,
    patch_size: int = 3,
    n_subvectors: int = 1,
    reference_parts=1,
    input_parts=1,
) -> ReferenceMatch:
    """AMRSR's hierarchical matching (Algorithm 1): the best reference patch for every input position.

    Args:
        query: ``(N, C, H, W)`` matching features of the input (SRNTT: of the
            bicubic-upsampled LR image).
        references: a sequence of ``N_M >= 1`` maps ``(N, C, H_m, W_m)``, the
            matching features of each reference (SRNTT: of the reference down-
            and up-sampled by the same bicubic, so both sides share the blur);
            each at least ``p x p``.  Same dtype and device as ``query``.
        patch_size: ``p``, odd (3 in SRNTT and AMRSR).
        n_subvectors: ``N_C``, channel groups chosen independently (divides ``C``).
        reference_parts: ``N_R`` per reference, a square number or ``(rows, cols)``.
        input_parts: ``N_I``, a square number or ``(rows, cols)``.

    Returns:
        :class:`ReferenceMatch`.  ``weight`` carries gradients to ``query`` and
        the references; the indices are piecewise constant.

    Raises:
        ValueError: maps of the wrong rank, channels, batch, dtype or device; a
            reference smaller than one patch; an even patch size; ``N_C`` not
            dividing ``C``; a part count that is neither a square nor a pair.

    Source: AMRSR supplement, Algorithm 1 (INPUTATT lines 15-20, REFATT lines
    21-28, W lines 10 and 13); SRNTT's normalised patch correlation.
    """
    patch_size, n_subvectors, references = _check_match(query, references, patch_size, n_subvectors)
    n, c, h, w = query.shape
    radius = patch_size // 2
    whole_q, groups_q = _query_patches(query, patch_size, n_subvectors)  # (N, D, L), (N, N_C, D_c, L)
    best_sim = query.new_full((n, n_subvectors, h * w), -math.inf)  # (N, N_C, L), running maximum (REFATT)
    best_ref = torch.zeros(n, n_subvectors, h * w, dtype=torch.long, device=query.device)
    best_row = torch.zeros_like(best_ref)
    best_col = torch.zeros_like(best_ref)
    sizes = []
    input_cells = part_grid(h, w, input_parts)
    for m, reference in enumerate(references):  # Alg. 1 line 5
        hr_, wr_ = reference.shape[-2:]
        sizes.append((hr_, wr_))
        for top, bottom, left, right in part_grid(hr_ - 2 * radius, wr_ - 2 * radius, reference_parts):  # line 6
            # The part: patch centres in rows [top, bottom) + radius, cols [left, right) + radius of the
            # reference, i.e. the cell grown by the radius on every side (the overlap).
            part = reference[:, :, top : bottom + 2 * radius, left : right + 2 * radius]  # (N, C, h_r + 2r, w_r + 2r)
            whole_p, groups_p = _reference_patches(part, patch_size, n_subvectors)  # (N, D, P), (N, N_C, D_c, P)
            part_width = right - left
            for i_top, i_bottom, i_left, i_right in input_cells:
                positions = _cell_positions(i_top, i_bottom, i_left, i_right, w, query.device)  # (L_i,)
                sim, index = _inputatt(whole_q[:, :, positions], whole_p)  # (N, L_i) each, lines 16-18
                if n_subvectors == 1:
                    candidate = sim.unsqueeze(1)  # (N, 1, L_i)
                else:  # REFATT scores: sub-vector j of the input patch against sub-vector j of the candidate
                    chosen = groups_p.gather(3, index[:, None, None, :].expand(-1, n_subvectors, groups_p.shape[2], -1))
                    candidate = (groups_q[:, :, :, positions] * chosen).sum(dim=2)  # (N, N_C, L_i), line 23
                better = candidate > best_sim[:, :, positions]  # (N, N_C, L_i), lines 24-25: strict, first wins ties
                rows = (top + index // part_width + radius).unsqueeze(1).expand_as(better)  # centre in the reference
                cols = (left + index % part_width + radius).unsqueeze(1).expand_as(better)
                best_sim[:, :, positions] = torch.where(better, candidate, best_sim[:, :, positions])
                best_ref[:, :, positions] = torch.where(better, torch.full_like(rows, m), best_ref[:, :, positions])
                best_row[:, :, positions] = torch.where(better, rows, best_row[:, :, positions])
                best_col[:, :, positions] = torch.where(better, cols, best_col[:, :, positions])
    shape = (n, n_subvectors, h, w)
    similarity = _similarity_with_gradient(query, references, best_ref, best_row, best_col, patch_size, n_subvectors)
    return ReferenceMatch(
        reference=best_ref.view(shape), row=best_row.view(shape), col=best_col.view(shape),
        similarity=similarity.view(shape), weight=similarity.view(shape).mean(dim=1, keepdim=True),
        patch_size=patch_size, reference_sizes=sizes,
    )


def _check_match(query, references, patch_size, n_subvectors):
    if not isinstance(query, torch.Tensor) or query.dim() != 4 or not query.is_floating_point():
        raise ValueError(f"query must be a float (N, C, H, W) feature map, got "
                         f"{tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__}")
    patch_size = positive_int("patch_size", patch_size)
    if patch_size % 2 == 0:
        raise ValueError(f"patch_size must be odd (a patch has a centre), got {patch_size}")
    n_subvectors = positive_int("n_subvectors", n_subvectors)
    n, c = query.shape[:2]
    if c % n_subvectors:
        raise ValueError(f"n_subvectors = {n_subvectors} must divide the {c} channels into equal groups")
    references = list(references) if not isinstance(references, torch.Tensor) else [references]
    if not references:
        raise ValueError("at least one reference is needed (a list of (N, C, H_m, W_m) maps)")
    for m, reference in enumerate(references):
        if not isinstance(reference, torch.Tensor) or reference.dim() != 4 or reference.shape[:2] != (n, c):
            shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
            raise ValueError(f"reference {m} must be a (N, C, H_m, W_m) = ({n}, {c}, ., .) map like the query, got {shape}")
        if reference.dtype != query.dtype or reference.device != query.device:
            raise ValueError(f"reference {m} is {reference.dtype} on {reference.device}; the query is {query.dtype} "
                             f"on {query.device}: move both to one dtype and device")
        if min(reference.shape[-2:]) < patch_size:
            raise ValueError(f"reference {m} is {tuple(reference.shape[-2:])}, smaller than one {patch_size}x{patch_size} "
                             "patch: use a larger reference or a smaller patch_size")
    return patch_size, n_subvectors, references


def _query_patches(query, patch_size, n_subvectors):
    """Zero-padded 'same' input patches: whole ``(N, C p^2, L)`` and per sub-vector ``(N, N_C, C p^2 / N_C, L)``, unit."""
    n, c = query.shape[:2]
    columns = F.unfold(query.detach(), patch_size, padding=patch_size // 2)  # (N, C p^2, L)
    whole = columns / columns.norm(dim=1, keepdim=True).clamp_min(PATCH_NORM_EPS)
    groups = columns.view(n, n_subvectors, -1, columns.shape[-1])  # (N, N_C, C p^2 / N_C, L)
    groups = groups / groups.norm(dim=2, keepdim=True).clamp_min(PATCH_NORM_EPS)
    return whole, groups


def _reference_patches(part, patch_size, n_subvectors):
    """Valid patches of a reference part: whole ``(N, C p^2, P)`` and per sub-vector ``(N, N_C, C p^2 / N_C, P)``, unit."""
    n = part.shape[0]
    columns = F.unfold(part.detach(), patch_size)  # (N, C p^2, P), patches wholly inside the part
    whole = columns / columns.norm(dim=1, keepdim=True).clamp_min(PATCH_NORM_EPS)
    groups = columns.view(n, n_subvectors, -1, columns.shape[-1])
    groups = groups / groups.norm(dim=2, keepdim=True).clamp_min(PATCH_NORM_EPS)
    return whole, groups


def _cell_positions(top, bottom, left, right, width, device) -> torch.Tensor:
    """Flat indices ``i * W + j`` of the positions of one input cell, row-major."""
    rows = torch.arange(top, bottom, device=device)
    cols = torch.arange(left, right, device=device)
    return (rows[:, None] * width + cols[None, :]).flatten()  # (L_i,)


def _inputatt(queries: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INPUTATT on one part: ``s = q_hat^T p_hat`` (a matrix product, in chunks of queries), best patch and its score.

    ``queries`` ``(N, D, L_i)``, ``patches`` ``(N, D, P)`` (both unit columns) ->
    ``(similarity (N, L_i), index (N, L_i))``.
    """
    n, _, length = queries.shape
    chunk = max(1, BLOCK_SCORE_ENTRIES // max(1, n * patches.shape[2]))  # queries per block
    sims, indices = [], []
    for start in range(0, length, chunk):
        scores = queries[:, :, start : start + chunk].transpose(1, 2) @ patches  # (N, chunk, P), line 16
        best = scores.max(dim=2)  # lines 17-18: first maximum wins ties
        sims.append(best.values)
        indices.append(best.indices)
    return torch.cat(sims, dim=1), torch.cat(indices, dim=1)  # (N, L_i) each


def _similarity_with_gradient(query, references, best_ref, best_row, best_col, patch_size, n_subvectors):
    """Recompute the chosen similarities with autograd (the search ran on detached features): ``(N, N_C, L)``."""
    n, c, h, w = query.shape
    radius = patch_size // 2
    q = F.unfold(query, patch_size, padding=radius).view(n, n_subvectors, -1, h * w)  # (N, N_C, D_c, L)
    q = q / q.norm(dim=2, keepdim=True).clamp_min(PATCH_NORM_EPS)
    similarity = query.new_zeros(n, n_subvectors, h * w)  # (N, N_C, L)
    for m, reference in enumerate(references):
        width = reference.shape[-1] - 2 * radius  # centres per row of the valid patch grid
        p = F.unfold(reference, patch_size).view(n, n_subvectors, -1, (reference.shape[-2] - 2 * radius) * width)
        p = p / p.norm(dim=2, keepdim=True).clamp_min(PATCH_NORM_EPS)  # (N, N_C, D_c, P_m)
        # Positions matched to another reference read a valid dummy patch here and are not used.
        index = ((best_row - radius) * width + (best_col - radius)).clamp(0, p.shape[3] - 1)  # (N, N_C, L)
        chosen = p.gather(3, index.unsqueeze(2).expand(-1, -1, p.shape[2], -1))  # (N, N_C, D_c, L)
        similarity = torch.where(best_ref == m, (q * chosen).sum(dim=2), similarity)
    return similarity


def transfer_patches(match: ReferenceMatch, values, stride: int = 1) -> torch.Tensor:
    """Paste the chosen reference patches of ``values`` and average them by their true overlap counts.

    For input position ``(x, y)`` matched to the patch centred at ``(u, v)`` of
    reference ``m``, the ``(p s) x (p s)`` window of ``values[m]`` with top-left
    corner ``((u - p//2) s, (v - p//2) s)`` is added to the output window with
    top-left corner ``((x - p//2) s, (y - p//2) s)`` (parts outside the output
    are dropped); each output pixel is then divided by the number of windows
    that covered it.  ``s = 1``: SRNTT's / AMRSR's ``3x3`` level; ``s = 2`` and
    ``4``: the ``6x6`` and ``12x12`` levels.  With ``N_C > 1``, channel group ``j``
    of the output comes from sub-vector ``j``'s choice.

    Args:
        match: a :class:`ReferenceMatch` from :func:`match_references`.
        values: a sequence of ``N_M`` maps ``(N, C_v, s H_m, s W_m)``: features
            of each reference at ``s`` times the matching resolution (SRNTT: VGG
            features of the HR reference).  ``N_C`` divides ``C_v``.
        stride: ``s`` (>= 1).

    Returns:
        ``(N, C_v, s H, s W)``, differentiable with respect to ``values``.

    Raises:
        ValueError: a number of value maps other than the number of references,
            maps of the wrong size, ``N_C`` not dividing ``C_v``.

    Source: SRNTT texture swapping (overlap averaging); AMRSR supplement Sec. 1
    (levels relu3_1, relu2_1, relu1_1).
    """
    stride = positive_int("stride", stride)
    values = list(values) if not isinstance(values, torch.Tensor) else [values]
    n, n_sub, h, w = match.reference.shape
    p = match.patch_size
    if len(values) != len(match.reference_sizes):
        raise ValueError(f"one value map per reference is needed: {len(match.reference_sizes)} references were "
                         f"matched, {len(values)} value maps given")
    c_v = values[0].shape[1]
    if c_v % n_sub:
        raise ValueError(f"the {n_sub} sub-vectors must divide the {c_v} value channels")
    for m, (v, (hm, wm)) in enumerate(zip(values, match.reference_sizes)):
        if v.dim() != 4 or tuple(v.shape[-2:]) != (stride * hm, stride * wm) or v.shape[:2] != (n, c_v):
            raise ValueError(f"value map {m} must be (N, C_v, s H_m, s W_m) = ({n}, {c_v}, {stride * hm}, "
                             f"{stride * wm}), got {tuple(v.shape)}")
    window = p * stride
    group = c_v // n_sub
    columns = values[0].new_zeros(n, n_sub, group * window * window, h * w)  # (N, N_C, C_v/N_C (ps)^2, L)
    for m, v in enumerate(values):
        wm = match.reference_sizes[m][1]
        # Every window of stride s over the value map, indexed by the patch centre it belongs to.
        unfolded = F.unfold(v, window, stride=stride)  # (N, C_v (ps)^2, P_m), P_m = (H_m - p + 1)(W_m - p + 1)
        unfolded = unfolded.view(n, n_sub, group * window * window, -1)  # (N, N_C, C_v/N_C (ps)^2, P_m)
        index = (match.row - p // 2) * (wm - p + 1) + (match.col - p // 2)  # (N, N_C, H, W)
        index = index.view(n, n_sub, 1, h * w).clamp(0, unfolded.shape[3] - 1)  # other references': dummy, unused
        index = index.expand(-1, -1, unfolded.shape[2], -1)
        picked = unfolded.gather(3, index)  # (N, N_C, C_v/N_C (ps)^2, L)
        mine = (match.reference == m).view(n, n_sub, 1, h * w)
        columns = torch.where(mine, picked, columns)
    columns = columns.reshape(n, c_v * window * window, h * w)  # (N, C_v (ps)^2, L), channel-major like unfold
    size, pad = (stride * h, stride * w), (p // 2) * stride
    summed = F.fold(columns, size, window, padding=pad, stride=stride)  # (N, C_v, s H, s W)
    ones = columns.new_ones(1, window * window, h * w)
    counts = F.fold(ones, size, window, padding=pad, stride=stride)  # (1, 1, s H, s W): true overlap count
    return summed / counts


def multi_reference_multiply_adds(
    shape: tuple[int, int, int, int], options: dict, reference_shapes: list[tuple[int, int, int, int]]
) -> int:
    """Multiply-adds of one :class:`MultiReferenceAttention` forward pass (AMRSR supplement, Algorithm 1).

    ``shape`` is the input's ``(N, C, H, W)`` (``L = H W`` positions),
    ``reference_shapes`` the ``(N, C, H_m, W_m)`` of the ``N_M`` references,
    with ``P_m = (H_m - p + 1)(W_m - p + 1)`` whole ``p x p`` patches each.
    ``C_m = C // reduction`` matching channels (``C`` with ``embed=False``) and
    ``D = C_m p^2`` entries per patch:

    * embeddings (``embed=True``): the 3x3 matching convolution ``C -> C_m`` on
      the input and every reference, ``N 9 C C_m (L + sum_m H_m W_m)``, and the
      1x1 value convolution ``C -> C`` on every reference, ``N C^2 sum_m H_m W_m``;
    * INPUTATT scores (line 16), every input patch against every reference
      patch: ``N L D sum_m P_m`` - the parts only cut this product into blocks;
    * REFATT (line 23, only for ``N_C > 1``): per reference part, the
      sub-vector scores of the chosen candidate, ``N L D`` each.

    Pasting the patches, the overlap average, the gate by ``W`` and the
    norms are element-wise or gathers and are not counted; nor is the
    recomputation of the chosen similarities that carries the gradients.

    Raises:
        ValueError: a reference smaller than one patch.
    """
    n, c, h, w = shape
    p = options["patch_size"]
    match_channels = c // options["reduction"] if options["embed"] else c
    depth = match_channels * p * p  # D
    positions = h * w
    reference_positions = sum(hm * wm for _, _, hm, wm in reference_shapes)
    if any(min(hm, wm) < p for _, _, hm, wm in reference_shapes):
        raise ValueError(f"every reference must hold at least one {p}x{p} patch, got {reference_shapes}")
    patches = sum((hm - p + 1) * (wm - p + 1) for _, _, hm, wm in reference_shapes)  # sum_m P_m
    embeddings = 0
    if options["embed"]:
        embeddings = n * 9 * c * match_channels * (positions + reference_positions) + n * c * c * reference_positions
    scores = n * positions * depth * patches  # line 16, q_hat^T p_hat for every (position, patch)
    refatt = 0
    if options["n_subvectors"] > 1:  # line 23, once per reference part
        parts = sum(len(part_grid(hm - p + 1, wm - p + 1, options["reference_parts"]))
                    for _, _, hm, wm in reference_shapes)
        refatt = n * positions * depth * parts
    return embeddings + scores + refatt


@register_attention(
    "multi_reference", kind="reference", loops="srlib.attention.loops:multi_reference_loops",
    multiply_adds=multi_reference_multiply_adds,
    # The live counterpart of the supplement's Table 7: N_M references, N_R reference parts, N_I input parts.
    bench={
        "multi_reference": {},
        **{f"multi_reference_m{m}": {"references": m} for m in (1, 4)},
        **{f"multi_reference_r{r}": {"reference_parts": r} for r in (4, 16)},
        "multi_reference_i4": {"input_parts": 4},
    },
    test_options=[
        {"reference_parts": 4, "input_parts": 4},
        {"n_subvectors": 2, "reference_parts": (1, 2)},
        {"embed": False, "gate": False},
    ],
)
class MultiReferenceAttention(nn.Module):
    """AMRSR's attention at one level: match the input against every reference, paste the best patches, gate by W.

    ``out = W * transfer(match(q(x), q(refs)), v(refs))`` with ``q`` the
    matching embedding and ``v`` the value embedding, both applied to the input
    and the references alike (the learnable texture extractor of TTSR, in its
    smallest form), or the maps themselves with ``embed=False`` (matching on
    fixed features, no learning).  No residual inside.  The multi-level
    transfer of a model (3x3, 6x6 and 12x12 patches) uses
    :func:`match_references` and :func:`transfer_patches` directly.

    Args:
        channels: ``C`` of the input and reference maps.
        patch_size: ``p`` (3).
        n_subvectors: ``N_C`` (divides ``C // reduction`` and ``C``).
        reference_parts: ``N_R``, a square number or ``(rows, cols)``.
        input_parts: ``N_I``, a square number or ``(rows, cols)``.
        reduction: matching channels ``C // reduction``.
        activation: after each embedding, ``"none"``, ``"relu"`` or ``"prelu"``.
        embed: learn the matching and value embeddings (else use the maps as they are).
        gate: multiply the pasted map by the confidence ``W`` (SRNTT, AMRSR Alg. 1 line 14).

    Layers: ``query_key_embed`` (3x3 conv ``C -> C // reduction``, matching),
    ``value_embed`` (1x1 conv ``C -> C``) when ``embed`` is True.

    Forward ``forward(x, references, return_details=False)``: ``x`` float
    ``(N, C, H, W)``, ``references`` a list of ``N_M >= 1`` maps ``(N, C, H_m, W_m)``
    (each at least ``p x p``) -> ``(N, C, H, W)``; with details a :class:`ReferenceMatch`.
    Deterministic (no randomness).

    Raises:
        ValueError: bad options; an input or reference that is not a float
            ``(N, C, ., .)`` map of the module's dtype and device, or smaller than a patch.

    Source: AMRSR supplement Algorithm 1; SRNTT (matching and swapping).
    """

    def __init__(
        self,
        channels: int,
        patch_size: int = 3,
        n_subvectors: int = 1,
        reference_parts=1,
        input_parts=1,
        reduction: int = 1,
        activation: str = "none",
        embed: bool = True,
        gate: bool = True,
    ):
        super().__init__()
        self.channels = positive_int("channels", channels)
        self.patch_size = positive_int("patch_size", patch_size)
        if self.patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd, got {patch_size}")
        self.n_subvectors = positive_int("n_subvectors", n_subvectors)
        self.reduction = positive_int("reduction", reduction)
        self.reference_parts = tuple(reference_parts) if isinstance(reference_parts, (list, tuple)) else reference_parts
        self.input_parts = tuple(input_parts) if isinstance(input_parts, (list, tuple)) else input_parts
        part_grid(64, 64, self.reference_parts)  # checks the counts
        part_grid(64, 64, self.input_parts)
        self.activation = normalize_activation(activation)
        if not isinstance(embed, bool) or not isinstance(gate, bool):
            raise TypeError(f"embed and gate must be True or False, got {embed!r} and {gate!r}")
        self.embed, self.gate = embed, gate
        match_channels = self.channels // self.reduction if embed else self.channels
        if match_channels < 1 or match_channels % self.n_subvectors or self.channels % self.n_subvectors:
            raise ValueError(f"n_subvectors = {self.n_subvectors} must divide the {match_channels} matching and the "
                             f"{self.channels} value channels")
        if embed:
            self.query_key_embed = embedding(self.channels, match_channels, self.activation, kernel_size=3)
            self.value_embed = embedding(self.channels, self.channels, self.activation)

    def forward(self, x: torch.Tensor, references, return_details: bool = False):
        check_feature_map(self, x, self.channels)
        references = list(references) if not isinstance(references, torch.Tensor) else [references]
        if not references:
            raise ValueError("at least one reference is needed: pass a list of (N, C, H_m, W_m) maps")
        for m, reference in enumerate(references):
            check_feature_map(self, reference, self.channels, name=f"reference {m}")
        if self.embed:
            query = self.query_key_embed(x)  # (N, C_e, H, W)
            keys = [self.query_key_embed(r) for r in references]  # (N, C_e, H_m, W_m) each
            values = [self.value_embed(r) for r in references]  # (N, C, H_m, W_m) each
        else:
            query, keys, values = x, references, references
        match = match_references(query, keys, self.patch_size, self.n_subvectors, self.reference_parts,
                                 self.input_parts)  # indices (N, N_C, H, W), W (N, 1, H, W)
        out = transfer_patches(match, values)  # (N, C, H, W), pasted and overlap-averaged
        if self.gate:
            out = out * match.weight  # (N, C, H, W), gated by the confidence W
        return (out, match) if return_details else out

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, patch_size={self.patch_size}, n_subvectors={self.n_subvectors}, "
                f"reference_parts={self.reference_parts}, input_parts={self.input_parts}, embed={self.embed}, "
                f"gate={self.gate}")
