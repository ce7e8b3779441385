"""One contract over the whole attention registry: every registered module passes every check.

The checks live in :mod:`srlib.attention.contract` (what each asserts is in its docstring);
this file runs each of them on every registered attention, with its default options, the
options of each of its benchmark cases and its ``test_options``.  A module registered
tomorrow is covered without editing this file; ``test_one_file_promise`` shows that for an
attention written in a plugin file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from srlib.attention import attention_entry, available_attention, check_attention
from srlib.attention.contract import CONTRACT_CHECKS, AttentionContractError, contract_subject


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _option_sets():
    sets = []
    for name in available_attention():
        entry = attention_entry(name)
        variants = [("default", {})]
        variants += [(case, dict(options)) for case, options in entry.bench.items() if options]
        variants += [(f"test{i}", dict(options)) for i, options in enumerate(entry.test_options)]
        seen = []
        for label, options in variants:
            if options not in seen:
                seen.append(options)
                sets.append(pytest.param(name, options, id=f"{name}-{label}"))
    return sets


OPTION_SETS = _option_sets()


@pytest.mark.parametrize("check", list(CONTRACT_CHECKS))
@pytest.mark.parametrize("name, options", OPTION_SETS)
def test_contract(name, options, check):
    """Every registered attention, with each of its option sets, passes each contract check."""
    subject = contract_subject(name, options)
    if check == "loops" and subject.loops is None:
        pytest.fail(f"{name} registers no float64 loop version (loops=...)")
    if check == "memory_guard" and not subject.guarded:
        pytest.skip(f"{name} has no memory guard (its memory is not quadratic)")
    CONTRACT_CHECKS[check](subject)


def test_every_mechanism_of_the_course_is_registered():
    """The mechanisms the notebooks teach are all in the registry, with their kinds."""
    kinds = {name: attention_entry(name).kind for name in available_attention()}
    expected = {
        "non_local": "in_scale", "region_non_local": "in_scale", "cross_scale_naive": "in_scale",
        "cross_scale_pixel": "cross_scale", "cross_scale": "cross_scale", "nlsa": "in_scale",
        "nlsa_dense": "in_scale", "gla": "in_scale", "multi_reference": "reference",
    }
    assert {k: kinds.get(k) for k in expected} == expected


def test_check_attention_reports_a_broken_module():
    """check_attention catches a module that adds its own residual and ignores return_details."""

    class ResidualInside(torch.nn.Module):
        def __init__(self, channels, reduction=2):
            super().__init__()
            self.channels = channels
            self.proj = torch.nn.Conv2d(channels, channels, 1)

        def forward(self, x, return_details=False):
            return x + self.proj(x)  # no input check, no details

    with pytest.raises(AttentionContractError) as caught:
        check_attention(ResidualInside, kind="in_scale", checks=["bad_input", "details"])
    message = str(caught.value)
    assert "bad_input" in message and "details" in message


def test_check_attention_on_a_registered_name_returns_the_report():
    """The public entry point runs every check and says which were skipped."""
    report = check_attention("nlsa", {"chunk_size": 8, "n_rounds": 2})
    assert report["memory_guard"].startswith("skipped")
    assert all(v == "ok" for k, v in report.items() if k != "memory_guard")


TOY_PLUGIN = '''
"""Top-2 attention: each query keeps its two largest scores (a toy plug-in for the tests)."""
import torch
from torch import nn
from srlib.attention import register_attention, check_feature_map
from srlib.attention._common import embedding
from dataclasses import dataclass


@dataclass
class ToyDetails:
    weights: torch.Tensor


def toy_loops(module, x):
    q = module.query_embed(x).flatten(2).transpose(1, 2)
    k = module.key_embed(x).flatten(2).transpose(1, 2)
    v = module.value_embed(x).flatten(2).transpose(1, 2)
    n, length, _ = q.shape
    out = torch.zeros_like(v)
    for b in range(n):
        for i in range(length):
            scores = [float(q[b, i] @ k[b, j]) for j in range(length)]
            best = sorted(range(length), key=lambda j: -scores[j])[:2]
            total = sum(torch.exp(torch.tensor(scores[j], dtype=x.dtype)) for j in best)
            for j in best:
                out[b, i] += torch.exp(torch.tensor(scores[j], dtype=x.dtype)) / total * v[b, j]
    return out.transpose(1, 2).reshape(x.shape)


@register_attention("toy", kind="in_scale", loops=toy_loops)
class TopTwoAttention(nn.Module):
    """Top-2 attention: softmax over the two best-scoring keys of each query."""

    def __init__(self, channels, reduction=2, activation="none"):
        super().__init__()
        self.channels = channels
        self.query_embed = embedding(channels, channels // reduction, activation)
        self.key_embed = embedding(channels, channels // reduction, activation)
        self.value_embed = embedding(channels, channels, activation)

    def forward(self, x, return_details=False):
        check_feature_map(self, x, self.channels)
        n, c, h, w = x.shape
        q = self.query_embed(x).flatten(2).transpose(1, 2)  # (N, L, C_e)
        k = self.key_embed(x).flatten(2).transpose(1, 2)  # (N, L, C_e)
        v = self.value_embed(x).flatten(2).transpose(1, 2)  # (N, L, C)
        scores = q @ k.transpose(1, 2)  # (N, L, L)
        kth = scores.topk(min(2, h * w), dim=-1).values[..., -1:]  # (N, L, 1)
        weights = scores.masked_fill(scores < kth, float("-inf")).softmax(dim=-1)  # (N, L, L)
        out = (weights @ v).transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W)
        return (out, ToyDetails(weights)) if return_details else out
'''


def test_one_file_promise(tmp_path):
    """An attention written in ONE file is contract-checked, benchmarked and trained without editing srlib."""
    plugin = tmp_path / "toy_attention.py"
    plugin.write_text(textwrap.dedent(TOY_PLUGIN))
    script = textwrap.dedent(f"""
        import json, sys
        from srlib.plugins import load_plugins
        load_plugins([{str(plugin)!r}])
        from srlib.attention import check_attention
        print("REPORT " + json.dumps(check_attention("toy")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.split("REPORT ", 1)[1])
    assert report["loops"] == "ok" and report["gradcheck"] == "ok"

    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "srlib", "bench", "attention", "--quick", "--no-progress", "--case", "dense_fused",
         "--module", f"{plugin}:TopTwoAttention", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "attention_bench.json").read_text())
    rows = [r for r in result["measurements"] if "TopTwoAttention" in r["case"]]
    assert rows and all(r["status"] == "ok" for r in rows), rows

    # A tiny "Set5" (one 40x40 crop) under --data-root shadows the real one, so the run's report is quick.
    from srlib.data.io import load_image, save_image
    from srlib.data.locate import repository_data_dir

    butterfly = load_image(repository_data_dir() / "benchmark" / "Set5" / "butterfly.png")  # (3, 256, 256) uint8
    save_image(butterfly[:, 100:140, 100:140], tmp_path / "data" / "benchmark" / "Set5" / "butterfly.png")
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "srlib", "train", "--preset", "smoke", "--model", "nlsn", "--steps", "2",
         "--option", "attention=toy", "--plugin", str(plugin), "--data-root", str(tmp_path / "data"),
         "--out", str(run), "--no-progress"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (run / "checkpoint.pt").exists()
    assert Path(run / "metrics.json").exists()


class ToyReferenceAttention(torch.nn.Module):
    """Dense attention from the input's positions to every position of every reference (a test toy)."""

    def __init__(self, channels, reduction=2):
        super().__init__()
        from srlib.attention._common import embedding

        self.channels = channels
        self.query_embed = embedding(channels, channels // reduction)
        self.key_embed = embedding(channels, channels // reduction)
        self.value_embed = embedding(channels, channels)

    def forward(self, x, references, return_details=False):
        from srlib.attention import AttentionDetails, check_feature_map

        check_feature_map(self, x, self.channels)
        for reference in references:
            check_feature_map(self, reference, self.channels, name="reference")
        n, c, h, w = x.shape
        q = self.query_embed(x).flatten(2).transpose(1, 2)  # (N, L, C_e)
        k = torch.cat([self.key_embed(r).flatten(2) for r in references], dim=2)  # (N, C_e, sum L_k)
        v = torch.cat([self.value_embed(r).flatten(2) for r in references], dim=2)  # (N, C, sum L_k)
        weights = (q @ k).softmax(dim=-1)  # (N, L, sum L_k)
        out = (weights @ v.transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W)
        return (out, AttentionDetails(weights=weights, map_size=(h, w))) if return_details else out


def toy_reference_loops(module, x, references):
    """The toy's softmax over all reference positions, one query at a time."""
    n, c, h, w = x.shape
    q = module.query_embed(x).flatten(2)  # (N, C_e, L)
    keys = torch.cat([module.key_embed(r).flatten(2) for r in references], dim=2)  # (N, C_e, K)
    values = torch.cat([module.value_embed(r).flatten(2) for r in references], dim=2)  # (N, C, K)
    out = torch.zeros(n, c, h * w, dtype=x.dtype)
    for b in range(n):
        for i in range(h * w):
            scores = torch.stack([q[b, :, i] @ keys[b, :, j] for j in range(keys.shape[2])])
            weights = torch.exp(scores - scores.max())
            out[b, :, i] = (weights / weights.sum() * values[b]).sum(dim=1)
    return out.reshape(n, c, h, w)


def test_the_reference_kind_contract_runs_on_a_toy():
    """The "reference" kind's signature forward(x, references) is checked like the others."""
    report = check_attention(ToyReferenceAttention, kind="reference", loops=toy_reference_loops)
    assert report["loops"] == "ok" and report["batch"] == "ok" and report["bad_input"] == "ok"
