"""Multi-reference part-based attention (srlib.attention.multi_reference, AMRSR Algorithm 1).

The module is compared with its float64 loops by the contract tests; here: the hierarchy equals the flat
search, parts with overlap equal no parts, the texture transfer at every level equals its loops, a
reference identical to the input gives the input back, and bad input gets one clear error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from srlib.attention.loops import multi_reference_match_loops, transfer_patches_loops
from srlib.attention.multi_reference import (
    match_references,
    part_grid,
    transfer_patches,
)


def _maps(seed=0, n=2, c=4, size=(6, 7), ref_sizes=((7, 9), (6, 6), (8, 5))):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(n, c, *size, generator=g, dtype=torch.float64)
    references = [torch.randn(n, c, *s, generator=g, dtype=torch.float64) for s in ref_sizes]
    return query, references


def _flat_argmax(query, references, p=3):
    """One argmax over every valid patch of every reference: (reference, row, col, cosine) per position."""
    n, c, h, w = query.shape
    q = F.unfold(query, p, padding=p // 2)  # (N, C p^2, L)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-6)
    patches, owners = [], []
    for m, r in enumerate(references):
        cols = F.unfold(r, p)  # (N, C p^2, P_m)
        patches.append(cols / cols.norm(dim=1, keepdim=True).clamp_min(1e-6))
        width = r.shape[-1] - p + 1
        owners += [(m, k // width + p // 2, k % width + p // 2) for k in range(cols.shape[-1])]
    scores = q.transpose(1, 2) @ torch.cat(patches, dim=2)  # (N, L, sum P_m)
    best = scores.max(dim=2)
    table = torch.tensor(owners)  # (sum P_m, 3)
    chosen = table[best.indices]  # (N, L, 3)
    return chosen.view(n, h, w, 3), best.values.view(n, h, w)


@pytest.mark.parametrize("reference_parts", [1, 4, 9, (2, 3)])
@pytest.mark.parametrize("n_references", [1, 3])
def test_hierarchy_with_one_subvector_equals_one_flat_argmax(reference_parts, n_references):
    """N_C = 1, N_I = 1, any N_R and N_M: best in each part, then across parts and references = the flat argmax."""
    query, references = _maps()
    references = references[:n_references]
    match = match_references(query, references, reference_parts=reference_parts)
    chosen, cosine = _flat_argmax(query, references)
    assert torch.equal(match.reference[:, 0], chosen[..., 0])
    assert torch.equal(match.row[:, 0], chosen[..., 1]) and torch.equal(match.col[:, 0], chosen[..., 2])
    torch.testing.assert_close(match.similarity[:, 0], cosine)
    torch.testing.assert_close(match.weight[:, 0], cosine)


@pytest.mark.parametrize("n_subvectors", [1, 2, 4])
def test_parts_with_overlap_give_the_same_answer_as_no_parts(n_subvectors):
    """Input parts never change the answer; reference parts do not with one sub-vector.

    (With N_C > 1 each reference part contributes its own INPUTATT winner as a candidate, so N_R changes
    the candidates: that is AMRSR's design, not a border effect.)
    """
    query, references = _maps(seed=1)
    whole = match_references(query, references, n_subvectors=n_subvectors)
    pairs = [(4, 1), (1, 4), (16, 9), ((3, 1), (2, 3))] if n_subvectors == 1 else [(1, 4), (1, 9), (1, (2, 3))]
    for reference_parts, input_parts in pairs:
        parts = match_references(query, references, n_subvectors=n_subvectors, reference_parts=reference_parts,
                                 input_parts=input_parts)
        for field in ("reference", "row", "col"):
            assert torch.equal(getattr(parts, field), getattr(whole, field)), (field, reference_parts, input_parts)
        torch.testing.assert_close(parts.similarity, whole.similarity)


def test_subvector_hierarchy_equals_its_loops():
    query, references = _maps(seed=2, n=1, size=(4, 5), ref_sizes=((5, 6), (4, 4)))
    match = match_references(query, references, n_subvectors=2, reference_parts=4)
    choice, similarity = multi_reference_match_loops(query, references, 3, 2, 4)
    for j in range(2):
        for x in range(4):
            for y in range(5):
                assert (int(match.reference[0, j, x, y]), int(match.row[0, j, x, y]),
                        int(match.col[0, j, x, y])) == choice[0][j][x][y]
                assert float(match.similarity[0, j, x, y]) == pytest.approx(similarity[0][j][x][y], abs=1e-12)


@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("n_subvectors", [1, 2])
def test_transfer_at_every_level_equals_its_loops(stride, n_subvectors):
    """3x3 patches at s = 1, 6x6 at s = 2, 12x12 at s = 4, averaged over their true overlap counts."""
    query, references = _maps(seed=3, n=1, size=(4, 5), ref_sizes=((5, 6), (4, 4)))
    match = match_references(query, references, n_subvectors=n_subvectors)
    g = torch.Generator().manual_seed(4)
    values = [torch.randn(1, 4, stride * r.shape[2], stride * r.shape[3], generator=g, dtype=torch.float64)
              for r in references]
    out = transfer_patches(match, values, stride=stride)
    assert out.shape == (1, 4, 4 * stride, 5 * stride)
    choice = [[[[(int(match.reference[0, j, x, y]), int(match.row[0, j, x, y]), int(match.col[0, j, x, y]))
                 for y in range(5)] for x in range(4)] for j in range(n_subvectors)]]
    torch.testing.assert_close(out, transfer_patches_loops(choice, values, 3, stride), rtol=0, atol=1e-12)


def test_a_reference_identical_to_the_input_gives_the_input_back_inside():
    query, _ = _maps(seed=5, n=1, size=(7, 8))
    match = match_references(query, [query])
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # positions whose whole patch is real
    assert (match.row[inner][0, 0] == torch.arange(1, 6)[:, None]).all()
    torch.testing.assert_close(match.similarity[inner], torch.ones_like(match.similarity[inner]))
    out = transfer_patches(match, [query])
    torch.testing.assert_close(out[:, :, 2:-2, 2:-2], query[:, :, 2:-2, 2:-2])  # covered by self-matches only


def test_the_confidence_map_carries_gradients():
    query, references = _maps(seed=6, n=1, size=(3, 4), ref_sizes=((4, 5),))
    query.requires_grad_()
    assert torch.autograd.gradcheck(lambda q: match_references(q, references).weight, (query,))


def test_part_grid_covers_every_position_once():
    for height, width, parts in [(7, 9, 4), (5, 5, 16), (3, 10, (2, 5)), (2, 2, 9)]:
        seen = torch.zeros(height, width, dtype=torch.long)
        for top, bottom, left, right in part_grid(height, width, parts):
            seen[top:bottom, left:right] += 1
        assert (seen == 1).all()
    with pytest.raises(ValueError, match="square"):
        part_grid(8, 8, 6)


def test_bad_input_gets_one_clear_error():
    query, references = _maps()
    with pytest.raises(ValueError, match="smaller than one 3x3 patch"):
        match_references(query, [references[0][..., :2, :]])
    with pytest.raises(ValueError, match="must divide the 4 channels"):
        match_references(query, references, n_subvectors=3)
    with pytest.raises(ValueError, match="at least one reference"):
        match_references(query, [])
    with pytest.raises(ValueError, match="like the query"):
        match_references(query, [references[0][:, :3]])
    with pytest.raises(ValueError, match="odd"):
        match_references(query, references, patch_size=2)
    match = match_references(query, references)
    with pytest.raises(ValueError, match="one value map per reference"):
        transfer_patches(match, references[:2])
