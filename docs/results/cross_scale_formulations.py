"""The two formulations of cross-scale attention (eq. 4) against each other, by map size: where ``"auto"`` switches.

Usage: ``PYTHONPATH=<srlib tree> python docs/results/cross_scale_formulations.py [--threads 1 2]``.

1. ``CrossScaleAttention(32, scale=2)`` (CSNLN's compact width) on random ``(N, 32, S, S)`` float32 maps:
   forward under ``torch.no_grad()`` and a training step (forward + backward of a squared-mean loss), best of
   three alternating passes of each formulation; prints conv time / matmul time (below 1: conv faster).
2. The shipped ``data/checkpoints/csnln_x2.pt`` with its cross-scale module switched between ``"auto"``,
   ``"matmul"`` and ``"conv"``: one 48 x 48 LR tile forward (1 thread) and one training forward + backward on
   16 patches of 24 x 24 (2 threads), medians of alternating passes, in ms.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from srlib.attention.cross_scale import CrossScaleAttention, cross_scale_attention_bytes
from srlib.checkpoint import load_checkpoint, model_from_checkpoint

FORWARD_MAPS = [(1, s) for s in (24, 32, 48, 64, 80, 100)]
TRAINING_MAPS = [(16, 24), (16, 32), (8, 48), (1, 48), (1, 64), (1, 100)]
IMPLEMENTATIONS = ("auto", "matmul", "conv")


def elapsed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def module_ratios(threads: int) -> list[dict]:
    """Conv over matmul time of the bare module, per map and pass kind."""
    torch.set_num_threads(threads)
    module = CrossScaleAttention(32, scale=2)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for training, maps in ((False, FORWARD_MAPS), (True, TRAINING_MAPS)):
        for n, side in maps:
            x = torch.randn(n, 32, side, side, generator=generator)  # (N, C, S, S)

            def run(implementation, x=x, training=training):
                module.implementation = implementation
                if training:
                    leaf = x.clone().requires_grad_(True)
                    module(leaf).square().mean().backward()
                else:
                    with torch.no_grad():
                        module(x)

            best = {"conv": [], "matmul": []}
            for implementation in best:
                run(implementation)  # warm-up
            for i in range(3):
                for implementation in ("conv", "matmul") if i % 2 == 0 else ("matmul", "conv"):
                    best[implementation].append(min(elapsed_ms(lambda i=implementation: run(i)) for _ in range(2)))
            conv, matmul = min(best["conv"]), min(best["matmul"])
            rows.append({"threads": threads, "training": training, "n": n, "side": side,
                         "score_map_mib": round(cross_scale_attention_bytes(n, side, side, 2) / 2**20, 1),
                         "conv_ms": round(conv, 1), "matmul_ms": round(matmul, 1),
                         "conv_over_matmul": round(conv / matmul, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def shipped_csnln() -> dict:
    """Milliseconds of the shipped CSNLN per cross-scale implementation (medians of alternating passes)."""
    root = Path(__file__).resolve().parents[2]
    model = model_from_checkpoint(load_checkpoint(root / "data" / "checkpoints" / "csnln_x2.pt"))
    modules = [m for m in model.modules() if isinstance(m, CrossScaleAttention)]
    generator = torch.Generator().manual_seed(0)
    tile = torch.rand(1, 3, 48, 48, generator=generator)  # float32 RGB in [0, 1], one LR tile
    batch = torch.rand(16, 3, 24, 24, generator=generator)  # the quick preset's LR training patches

    def forward():
        model.eval()
        with torch.no_grad():
            model(tile)

    def training_step():
        model.train()
        model.zero_grad(set_to_none=True)
        model(batch).square().mean().backward()

    result = {}
    for name, fn, threads, passes in (("tile_forward_1_thread", forward, 1, 7),
                                      ("training_step_2_threads", training_step, 2, 5)):
        torch.set_num_threads(threads)
        times = {implementation: [] for implementation in IMPLEMENTATIONS}

        def switch(implementation):
            for m in modules:
                m.implementation = implementation

        for implementation in IMPLEMENTATIONS:
            switch(implementation)
            fn()  # warm-up
        for i in range(passes):
            for implementation in IMPLEMENTATIONS if i % 2 == 0 else IMPLEMENTATIONS[::-1]:
                switch(implementation)
                times[implementation].append(elapsed_ms(fn))
        result[name] = {implementation: round(statistics.median(v), 1) for implementation, v in times.items()}
        print(name, json.dumps(result[name]), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rows = [row for threads in args.threads for row in module_ratios(threads)]
    print(json.dumps({"module": rows, "shipped_csnln": shipped_csnln()}))
