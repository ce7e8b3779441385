"""Benchmarks: forward time and peak memory of the attention modules.

``srlib bench attention`` (also ``python -m srlib.bench attention``) runs each
attention module of :mod:`srlib.attention` on a random ``(1, C, S, S)``
float32 feature map under ``torch.no_grad()`` and records

* **time**: the median, in milliseconds, of ``repeats`` forward passes after
  ``warmup`` passes that are not timed (on CUDA each pass is bracketed by
  ``torch.cuda.synchronize``);
* **peak memory**: what the forward pass *adds* on top of the module and its
  input, in MiB (2^20 bytes), the output included.

The default setting is that of the NLSN supplement, Table 2 (64 channels,
maps of 100 x 100 and 150 x 150; source: Mei, Fan and Zhou, "Image
Super-Resolution with Non-Local Sparse Attention", CVPR 2021, supplementary
material Sec. 2, where NLA took 9.6 ms / 730 MB at 100 x 100 and 47.3 ms /
3738 MB at 150 x 150 on an RTX 2070).  A sweep over more sizes gives the
scaling plot: on log-log axes a cost that grows like ``(H W)^k`` is a line of
slope ``k`` against the number of positions ``H W``: 2 for dense attention and
for region attention with a fixed grid (each cell is a fixed fraction of the
map), about 1 for NLSA (attention within chunks of fixed size).  At small sizes
fixed costs (1x1 convolutions, launch overheads) flatten the lines.

How memory is measured:

* **CUDA** - in this process: ``torch.cuda.reset_peak_memory_stats()`` once the
  module and input are made and warmed up, then ``max_memory_allocated()``
  minus ``memory_allocated()`` read just before the timed passes.  This counts
  tensors, not the caching allocator's reserve or the CUDA context.
* **CPU** - every (case, size) runs in a *fresh* Python process (so the
  heap of one case cannot hide or inflate the next one), which prints its
  record as JSON.  Inside it, after the warm-up, free heap memory is handed
  back to the OS (glibc ``malloc_trim``), the resident set size ``VmRSS`` is
  read from ``/proc/self/status``, the peak ``VmHWM`` is reset by writing ``5``
  to ``/proc/self/clear_refs``, the timed passes run, and the peak added is
  ``VmHWM - VmRSS_before`` (``memory_method = "proc_clear_refs"``).  Where the
  peak cannot be reset (not Linux, or not permitted) the process-lifetime
  peak ``ru_maxrss`` of :func:`resource.getrusage` is read around one extra
  first forward pass, before the warm-up (``memory_method = "ru_maxrss"``: a
  lower bound if building the module ever needed more than the forward).
  Resident memory counts whole pages the allocator took from the OS, so a few
  MiB of noise are normal at tiny sizes.

A case the memory guard of :mod:`srlib.attention.non_local` refuses
(:class:`~srlib.attention.non_local.AttentionMemoryError`) is recorded with
status ``"refused"`` and the guard's message; a module that cannot be imported
(e.g. NLSA before ``srlib.attention.sparse`` exists) as ``"unavailable"``;
other outcomes are ``"failed"``, ``"timeout"``, ``"out_of_memory"`` and
``"skipped"`` (larger sizes after a timeout or an out-of-memory).  The run
itself never stops on one case.

Public API: :func:`run_attention_benchmark` (returns a dict, written as
``attention_bench.json``), :func:`format_attention_report` (the printed
table), :func:`plot_attention_benchmark` (the log-log figure,
``attention_bench.png``), :func:`save_attention_benchmark`,
:func:`build_attention_case` and :data:`ATTENTION_CASES`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib
import json
import math
import numbers
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ATTENTION_CASES",
    "CALIBRATION_CASES",
    "DEFAULT_SIZES",
    "DEFAULT_SWEEP_SIZES",
    "QUICK_SIZES",
    "QUICK_SWEEP_SIZES",
    "CaseUnavailableError",
    "add_attention_arguments",
    "attention_command",
    "build_attention_case",
    "format_attention_report",
    "plot_attention_benchmark",
    "run_attention_benchmark",
    "save_attention_benchmark",
]

# The cases of `srlib bench attention`, in the order they are measured and printed.
ATTENTION_CASES: dict[str, str] = {
    "dense_explicit": "NonLocalAttention, explicit path: builds the (HW, HW) attention map (CSNLN eq. 1-2)",
    "dense_fused": "NonLocalAttention, fused path: scaled_dot_product_attention, no stored map",
    "region": "RegionNonLocalAttention, explicit path: attention inside each cell of a rows x cols grid",
    "nlsa_r1": "NonLocalSparseAttention, 1 hashing round (NLSN; reduction 4, chunk 144)",
    "nlsa_r2": "NonLocalSparseAttention, 2 hashing rounds (NLSN; reduction 4, chunk 144)",
    "nlsa_r4": "NonLocalSparseAttention, 4 hashing rounds (NLSN; reduction 4, chunk 144)",
    "nlsa_r8": "NonLocalSparseAttention, 8 hashing rounds (NLSN; reduction 4, chunk 144)",
    "cross_scale": "CrossScaleAttention, scale 2, patch 3 (CSNLN eq. 4); output (N, C, 2S, 2S)",
}
# Not attention: a self-check of the memory measurement, accepted by `cases` but not run by default.
CALIBRATION_CASES: dict[str, str] = {
    "memory_probe": "fills a probe_mib MiB float32 tensor inside forward; the measured peak must show it",
}
_NLSA_ROUNDS = {"nlsa_r1": 1, "nlsa_r2": 2, "nlsa_r4": 4, "nlsa_r8": 8}
_DENSE_REFERENCE = "dense_explicit"  # speed-up and memory ratio are against this case
_FUSED_REFERENCE = "dense_fused"  # "faster than" is against this case
_RATIO_SIZES = (100, 200)  # time(S=200) / time(S=100): x4 positions -> 4 if linear, 16 if quadratic

DEFAULT_SIZES = (100, 150)  # NLSN supplement Table 2
DEFAULT_SWEEP_SIZES = (25, 50, 75, 100, 125, 150, 200)
QUICK_SIZES = (8, 16)
QUICK_SWEEP_SIZES = (8, 16)
DEFAULT_REPEATS, DEFAULT_WARMUP = 10, 2
QUICK_REPEATS, QUICK_WARMUP = 1, 1

_WORKER_COMMAND = "_measure-one"  # hidden: `python -m srlib.bench _measure-one SPEC_JSON`
_RESULT_PREFIX = "SRLIB_BENCH_RESULT "  # the worker's one line of JSON on stdout starts with this
_MIB = float(2**20)
_STOPPING_STATUSES = ("timeout", "out_of_memory")  # larger sizes of that case are then skipped


class CaseUnavailableError(RuntimeError):
    """A benchmark case whose module cannot be imported here (e.g. a module not written yet)."""


# ----------------------------------------------------------------------------------------------
# The modules measured
# ----------------------------------------------------------------------------------------------


class _MemoryProbe(nn.Module):
    """Calibration case: ``forward(x)`` fills a ``mib`` MiB float32 tensor, frees it, returns ``x + 0``."""

    def __init__(self, mib: float):
        super().__init__()
        self.numel = int(mib * _MIB) // 4  # float32 elements

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = torch.ones(self.numel, dtype=torch.float32, device=x.device)  # writes every page
        return x + (block[0] - 1.0)  # (N, C, H, W), equal to x; keeps the fill from being skipped


def build_attention_case(
    name: str,
    channels: int = 64,
    *,
    region_grid: tuple[int, int] = (2, 2),
    max_attention_bytes: float | None = None,
    probe_mib: float = 200.0,
) -> nn.Module:
    """The module one benchmark case measures, freshly initialised, in training mode.

    Args:
        name: a key of :data:`ATTENTION_CASES` or :data:`CALIBRATION_CASES`.
        channels: C of the ``(N, C, H, W)`` input map.
        region_grid: ``(rows, cols)`` of the ``"region"`` case.
        max_attention_bytes: memory limit of the guard of the dense, region and
            cross-scale modules (None: their default, half the free memory of
            the device; ``math.inf``: off).  NLSA has no such guard.
        probe_mib: MiB that the ``"memory_probe"`` case allocates in forward.

    Returns:
        An ``nn.Module`` whose ``forward(x)`` takes ``(N, C, H, W)`` float32 and
        returns ``(N, C, H, W)`` (``(N, C, 2H, 2W)`` for ``"cross_scale"``).

    Raises:
        ValueError: an unknown ``name``, or options the module rejects.
        CaseUnavailableError: an NLSA case while ``srlib.attention.sparse``
            cannot be imported (the message holds the import error).
    """
    from srlib.attention import (
        CrossScaleAttention,
        NonLocalAttention,
        RegionNonLocalAttention,
    )

    if name == "dense_explicit":
        return NonLocalAttention(channels, implementation="explicit", max_attention_bytes=max_attention_bytes)
    if name == "dense_fused":
        return NonLocalAttention(channels, implementation="fused", max_attention_bytes=max_attention_bytes)
    if name == "region":
        return RegionNonLocalAttention(
            channels, implementation="explicit", regions=tuple(region_grid), max_attention_bytes=max_attention_bytes
        )
    if name in _NLSA_ROUNDS:
        sparse_attention = _import_sparse_attention()
        return sparse_attention(
            channels=channels, reduction=4, chunk_size=144, n_rounds=_NLSA_ROUNDS[name], res_scale=1.0, seed=0
        )
    if name == "cross_scale":
        return CrossScaleAttention(channels, scale=2, patch_size=3, max_attention_bytes=max_attention_bytes)
    if name == "memory_probe":
        return _MemoryProbe(probe_mib)
    raise ValueError(f"unknown benchmark case {name!r}; choose from {', '.join(_all_case_names())}")


def _all_case_names() -> list[str]:
    return [*ATTENTION_CASES, *CALIBRATION_CASES]


def _import_sparse_attention() -> type:
    """``srlib.attention.sparse.NonLocalSparseAttention``, imported only when an NLSA case needs it."""
    try:
        module = importlib.import_module("srlib.attention.sparse")
        return module.NonLocalSparseAttention
    except Exception as exc:  # a missing file, a syntax error, a missing name: the case is unavailable
        raise CaseUnavailableError(
            f"srlib.attention.sparse.NonLocalSparseAttention cannot be imported ({type(exc).__name__}: {exc})"
        ) from exc


def _availability(name: str) -> str | None:
    """None if the case can be built here, else the reason it cannot."""
    if name not in _NLSA_ROUNDS:
        return None
    try:
        _import_sparse_attention()
    except CaseUnavailableError as exc:
        return str(exc)
    return None


# ----------------------------------------------------------------------------------------------
# One measurement, in this process
# ----------------------------------------------------------------------------------------------


def _release_free_heap() -> None:
    """Collect garbage and hand free heap pages back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    Without it, memory that the warm-up freed stays resident inside the heap, the
    measured pass reuses it, and the resident peak would not show it.
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        pass


def _proc_status_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of ``/proc/self/status`` in bytes (Linux), None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB (KiB)
    except OSError:
        return None
    return None


def _reset_resident_peak() -> bool:
    """Reset ``VmHWM`` to the current resident size; True when the kernel allowed it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None


def _lifetime_peak_bytes() -> int | None:
    """Peak resident memory of this process so far (``ru_maxrss``), None where unknown (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes; Linux: KiB


def _timed_passes(module: nn.Module, x: torch.Tensor, count: int) -> list[float]:
    """Run ``count`` forward passes; return each one's wall time in ms (CUDA: synchronised)."""
    cuda = x.device.type == "cuda"
    times = []
    for _ in range(count):
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        out = module(x)
        if cuda:
            torch.cuda.synchronize(x.device)
        times.append((time.perf_counter() - start) * 1000.0)
        del out  # not held while the next pass runs
    return times


def _time_and_memory(module: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, Any]:
    """Times of the ``repeats`` passes after ``warmup`` ones, and the memory the passes add."""
    if x.device.type == "cuda":
        _timed_passes(module, x, warmup)
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        before = torch.cuda.memory_allocated(x.device)
        times = _timed_passes(module, x, repeats)
        peak = torch.cuda.max_memory_allocated(x.device)
        return {"times_ms": times, "memory_bytes": peak - before, "memory_method": "cuda_max_memory_allocated",
                "baseline_bytes": before}
    _release_free_heap()
    if _reset_resident_peak():
        _timed_passes(module, x, warmup)
        _release_free_heap()
        before = _proc_status_bytes("VmRSS")
        _reset_resident_peak()
        times = _timed_passes(module, x, repeats)
        peak = _proc_status_bytes("VmHWM")
        return {"times_ms": times, "memory_bytes": max(peak - before, 0), "memory_method": "proc_clear_refs",
                "baseline_bytes": before}
    # No resettable peak: read the lifetime peak around a first, untimed pass, then time as usual.
    before = _lifetime_peak_bytes()
    _timed_passes(module, x, 1)
    after = _lifetime_peak_bytes()
    _timed_passes(module, x, warmup)
    times = _timed_passes(module, x, repeats)
    if before is None or after is None:
        return {"times_ms": times, "memory_bytes": None, "memory_method": "unavailable", "baseline_bytes": None}
    return {"times_ms": times, "memory_bytes": max(after - before, 0), "memory_method": "ru_maxrss",
            "baseline_bytes": before}


def _new_record(spec: dict[str, Any]) -> dict[str, Any]:
    size = spec["size"]
    return {
        "case": spec["case"], "size": size, "positions": size * size, "status": None, "time_ms": None,
        "times_ms": [], "memory_mib": None, "memory_method": None, "baseline_mib": None, "reason": None,
    }


def _measure_here(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, warm up, time and measure one (case, size) in this process; never raises for the case itself.

    ``spec`` holds ``case, size, channels, repeats, warmup, device, threads, seed,
    region_grid, max_attention_bytes, probe_mib``.  Returns one record (see
    :func:`run_attention_benchmark`).
    """
    from srlib.attention.non_local import AttentionMemoryError

    record = _new_record(spec)
    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    limit = spec["max_attention_bytes"]
    try:
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's generator
            torch.manual_seed(spec["seed"])
            module = build_attention_case(
                spec["case"], spec["channels"], region_grid=tuple(spec["region_grid"]),
                max_attention_bytes=math.inf if limit == "inf" else limit, probe_mib=spec["probe_mib"],
            )
    except CaseUnavailableError as exc:
        return {**record, "status": "unavailable", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure of one case is recorded, the run goes on
        return {**record, "status": "failed", "reason": f"building the module: {type(exc).__name__}: {exc}"}
    module = module.to(device).eval()
    generator = torch.Generator().manual_seed(spec["seed"])
    size = spec["size"]
    x = torch.randn((1, spec["channels"], size, size), generator=generator).to(device)  # (1, C, S, S) float32
    try:
        with torch.no_grad():
            measured = _time_and_memory(module, x, spec["repeats"], spec["warmup"])
    except AttentionMemoryError as exc:  # the guard refused before allocating
        return {**record, "status": "refused", "reason": str(exc)}
    except (torch.OutOfMemoryError, MemoryError) as exc:
        return {**record, "status": "out_of_memory", "reason": f"{type(exc).__name__}: {exc}".strip()}
    except Exception as exc:  # noqa: BLE001 - any failure of one case is recorded, the run goes on
        return {**record, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        del module, x
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    memory = measured["memory_bytes"]
    baseline = measured["baseline_bytes"]
    return {
        **record,
        "status": "ok",
        "time_ms": statistics.median(measured["times_ms"]),
        "times_ms": measured["times_ms"],
        "memory_mib": None if memory is None else memory / _MIB,
        "memory_method": measured["memory_method"],
        "baseline_mib": None if baseline is None else baseline / _MIB,
    }


# ----------------------------------------------------------------------------------------------
# One measurement in a fresh process (CPU)
# ----------------------------------------------------------------------------------------------


def _worker_main(argv: list[str]) -> int:
    """Hidden entry point: measure the spec given as JSON and print the record as one JSON line."""
    if len(argv) != 1:
        print(f"usage: python -m srlib.bench {_WORKER_COMMAND} SPEC_JSON", file=sys.stderr)
        return 2
    record = _measure_here(json.loads(argv[0]))
    print(_RESULT_PREFIX + json.dumps(record), flush=True)
    return 0


def _measure_in_subprocess(spec: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    """Run :func:`_measure_here` in a fresh ``python -m srlib.bench`` process and return its record."""
    record = _new_record(spec)
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec["threads"])
    package_root = str(Path(__file__).resolve().parent.parent)  # so the worker imports this very srlib
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "srlib.bench", _WORKER_COMMAND, json.dumps(spec)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {**record, "status": "timeout", "reason": f"no result within {timeout_s:g} s (raise --timeout)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX):])
    if proc.returncode < 0:
        signal_number = -proc.returncode
        likely = " - most likely the kernel's out-of-memory killer" if signal_number == 9 else ""
        return {**record, "status": "out_of_memory" if signal_number == 9 else "failed",
                "reason": f"the measuring process was killed by signal {signal_number}{likely}"}
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:]) or "no output"
    return {**record, "status": "failed", "reason": f"the measuring process exited with {proc.returncode}: {tail}"}


# ----------------------------------------------------------------------------------------------
# The whole benchmark
# ----------------------------------------------------------------------------------------------


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)  # numpy integers become plain ints (JSON)


def _check_sizes(name: str, sizes: Sequence[int]) -> list[int]:
    sizes = list(sizes)
    for s in sizes:
        _positive_int(f"every value of {name}", s)
    return sorted(set(sizes))


def _check_cases(cases: Sequence[str] | None) -> list[str]:
    if cases is None:
        return list(ATTENTION_CASES)
    if isinstance(cases, str):
        cases = [cases]
    known = _all_case_names()
    unknown = [c for c in cases if c not in known]
    if unknown:
        raise ValueError(f"unknown benchmark case(s) {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    if not cases:
        raise ValueError(f"no cases to measure; choose from {', '.join(known)}")
    return list(dict.fromkeys(cases))  # drop repeats, keep the order


def _resolve_device(device: str | torch.device) -> torch.device:
    from srlib.utils import pick_device

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = pick_device(str(device))
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"the attention benchmark measures on 'cpu' or 'cuda' (or 'auto'), got {str(device)!r}")
    return resolved


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _environment(device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "cpu_model": _cpu_model(),
        "torch_threads": threads,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


def run_attention_benchmark(
    cases: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    sweep_sizes: Sequence[int] | None = None,
    *,
    channels: int = 64,
    repeats: int | None = None,
    warmup: int | None = None,
    device: str | torch.device = "auto",
    threads: int | None = None,
    region_grid: tuple[int, int] = (2, 2),
    max_attention_bytes: float | None = None,
    probe_mib: float = 200.0,
    seed: int = 0,
    timeout_s: float | None = 1800.0,
    quick: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Forward time and peak memory of attention modules on ``(1, C, S, S)`` float32 maps.

    Every case is measured at every size of ``sizes`` (the table) and
    ``sweep_sizes`` (the scaling plot), each size once.  How time and memory
    are measured is described in the module docstring: CUDA in this process,
    CPU in a fresh process per (case, size).

    Args:
        cases: names from :data:`ATTENTION_CASES` (default: all, in that order)
            or :data:`CALIBRATION_CASES`.
        sizes: map sides S of the table (default :data:`DEFAULT_SIZES`,
            ``(100, 150)`` as in NLSN supplement Table 2).
        sweep_sizes: map sides of the scaling plot (default
            :data:`DEFAULT_SWEEP_SIZES`); ``[]`` for none.
        channels: C of the input map (64 as in NLSN Table 2).
        repeats: timed forward passes per (case, size); the median is reported
            (default 10, quick 1).
        warmup: untimed passes before them (default 2, quick 1).
        device: ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        threads: ``torch.set_num_threads`` for the measurement (default: every
            core this process may use); recorded in the result.
        region_grid: ``(rows, cols)`` of the ``"region"`` case.
        max_attention_bytes: memory-guard limit passed to the dense, region and
            cross-scale modules (None: their default, half the free memory).
        probe_mib: MiB allocated by the ``"memory_probe"`` calibration case.
        seed: seeds the module weights and the random input.
        timeout_s: CPU only: a measurement still running after this many
            seconds is stopped (status ``"timeout"``; larger sizes of that case
            are then skipped); None for no limit.
        quick: tiny sizes (:data:`QUICK_SIZES`, :data:`QUICK_SWEEP_SIZES`), one
            repeat, one warm-up - for tests; arguments given explicitly win.
            None: on when the environment variable ``SRLIB_QUICK`` is set.
        progress: show a ``tqdm`` bar over the cases.

    Returns:
        A JSON-ready dict: ``"benchmark"``, ``"settings"`` (the arguments used),
        ``"environment"`` (device, CPU model, torch version, threads...),
        ``"cases"`` (name -> description), ``"measurements"`` (one record per
        (case, size): ``case, size, positions = S*S, status, time_ms`` (median,
        ms), ``times_ms`` (every timed pass), ``memory_mib`` (peak added, MiB),
        ``memory_method``, ``baseline_mib``, ``reason``), and ``"summary"``
        (table rows with speed-up and memory ratio against ``dense_explicit``,
        log-log slopes, ``time(S=200)/time(S=100)`` and the size from which each
        NLSA case is faster than ``dense_fused``).  ``status`` is ``"ok"``,
        ``"refused"`` (memory guard; ``reason`` is its message),
        ``"unavailable"``, ``"failed"``, ``"timeout"``, ``"out_of_memory"`` or
        ``"skipped"``; only ``"ok"`` records have a time.

    Raises:
        ValueError: an unknown case; sizes, repeats, warm-up, channels, threads,
            grid or limits that are not positive (warm-up may be 0); no sizes at all.
        RuntimeError: ``device="cuda"`` where CUDA is not available.
    """
    from srlib.utils import quick_mode

    quick = quick_mode() if quick is None else bool(quick)
    case_names = _check_cases(cases)
    table_sizes = _check_sizes("sizes", (QUICK_SIZES if quick else DEFAULT_SIZES) if sizes is None else sizes)
    sweep = _check_sizes(
        "sweep_sizes", (QUICK_SWEEP_SIZES if quick else DEFAULT_SWEEP_SIZES) if sweep_sizes is None else sweep_sizes
    )
    if not table_sizes and not sweep:
        raise ValueError("no sizes to measure: give at least one size in sizes or sweep_sizes")
    channels = _positive_int("channels", channels)
    repeats = _positive_int("repeats", (QUICK_REPEATS if quick else DEFAULT_REPEATS) if repeats is None else repeats)
    warmup = _positive_int("warmup", (QUICK_WARMUP if quick else DEFAULT_WARMUP) if warmup is None else warmup, 0)
    threads = _positive_int("threads", _default_threads() if threads is None else threads)
    seed = _positive_int("seed", seed, 0)
    try:
        rows, cols = region_grid
        region_grid = (_positive_int("region_grid rows", rows), _positive_int("region_grid cols", cols))
    except (TypeError, ValueError):
        raise ValueError(f"region_grid must be a pair (rows, cols) of positive integers, got {region_grid!r}") from None
    for name, value in (("max_attention_bytes", max_attention_bytes), ("timeout_s", timeout_s)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0):
            raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    if isinstance(probe_mib, bool) or not isinstance(probe_mib, numbers.Real) or not probe_mib >= 0:
        raise ValueError(f"probe_mib must be a number >= 0, got {probe_mib!r}")
    run_device = _resolve_device(device)

    from tqdm.auto import tqdm

    if max_attention_bytes is None:
        limit: float | str | None = None
    else:  # JSON has no infinity: an "inf" string tells the worker to turn the guard off
        limit = "inf" if math.isinf(max_attention_bytes) else float(max_attention_bytes)
    probe_mib = float(probe_mib)
    settings = {
        "cases": case_names, "sizes": table_sizes, "sweep_sizes": sweep, "channels": channels, "batch": 1,
        "dtype": "float32", "repeats": repeats, "warmup": warmup, "threads": threads, "region_grid": list(region_grid),
        "max_attention_bytes": limit, "probe_mib": probe_mib, "seed": seed, "timeout_s": timeout_s, "quick": quick,
        "isolation": "in-process" if run_device.type == "cuda" else "fresh process per (case, size)",
    }
    measured_sizes = sorted(set(table_sizes) | set(sweep))
    records: list[dict[str, Any]] = []
    previous_threads = torch.get_num_threads()
    bar = tqdm(case_names, desc="attention bench", unit="case", disable=not progress)
    try:
        for case in bar:
            unavailable = _availability(case)
            stopped: str | None = None
            for size in measured_sizes:
                bar.set_postfix_str(f"{case} S={size}")
                spec = {
                    "case": case, "size": size, "channels": channels, "repeats": repeats, "warmup": warmup,
                    "device": str(run_device), "threads": threads, "seed": seed, "region_grid": list(region_grid),
                    "max_attention_bytes": limit, "probe_mib": probe_mib,
                }
                if unavailable is not None:
                    record = {**_new_record(spec), "status": "unavailable", "reason": unavailable}
                elif stopped is not None:
                    record = {**_new_record(spec), "status": "skipped", "reason": stopped}
                elif run_device.type == "cuda":
                    record = _measure_here(spec)
                else:
                    record = _measure_in_subprocess(spec, timeout_s)
                if record["status"] in _STOPPING_STATUSES and stopped is None:
                    stopped = f"not run: {record['status']} at the smaller size S={size}"
                records.append(record)
    finally:
        bar.close()
        torch.set_num_threads(previous_threads)
    result = {
        "benchmark": "attention",
        "settings": settings,
        "environment": _environment(run_device, threads),
        "cases": {name: {**ATTENTION_CASES, **CALIBRATION_CASES}[name] for name in case_names},
        "measurements": records,
    }
    result["summary"] = _summarise(result)
    return result


# ----------------------------------------------------------------------------------------------
# Summary, report, plot, files
# ----------------------------------------------------------------------------------------------


def _ok(result: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["case"], r["size"]): r for r in result["measurements"] if r["status"] == "ok"}


def _loglog_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(value) against log(positions); None with fewer than 2 distinct x."""
    points = [(x, y) for x, y in points if x > 0 and y is not None and y > 0]
    if len({x for x, _ in points}) < 2:
        return None
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return sxy / sxx


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Derived numbers: table rows with ratios, slopes, the S=200/S=100 ratio, 'faster than fused from'."""
    ok = _ok(result)
    settings = result["settings"]
    cases = settings["cases"]
    by_key = {(r["case"], r["size"]): r for r in result["measurements"]}
    table = []
    for size in settings["sizes"]:
        ref = ok.get((_DENSE_REFERENCE, size))
        for case in cases:
            r = by_key[(case, size)]
            mine = ok.get((case, size))
            table.append({
                "size": size, "case": case, "status": r["status"], "time_ms": r["time_ms"],
                "memory_mib": r["memory_mib"],
                "speedup_vs_dense_explicit": _ratio(ref and ref["time_ms"], mine and mine["time_ms"]),
                "memory_ratio_vs_dense_explicit": _ratio(mine and mine["memory_mib"], ref and ref["memory_mib"]),
            })
    slopes = {}
    for case in cases:
        mine = sorted((r for (c, _), r in ok.items() if c == case), key=lambda r: r["size"])
        slopes[case] = {
            "time": _loglog_slope([(r["positions"], r["time_ms"]) for r in mine]),
            "memory": _loglog_slope([(r["positions"], r["memory_mib"]) for r in mine]),
        }
    small, large = _RATIO_SIZES
    ratios = {
        case: ok[(case, large)]["time_ms"] / ok[(case, small)]["time_ms"]
        for case in cases if (case, small) in ok and (case, large) in ok
    }
    faster = {}
    measured = sorted({r["size"] for r in result["measurements"]})
    for case in cases:
        if case not in _NLSA_ROUNDS:
            continue
        both = [s for s in measured if (case, s) in ok and (_FUSED_REFERENCE, s) in ok]
        wins = [ok[(case, s)]["time_ms"] < ok[(_FUSED_REFERENCE, s)]["time_ms"] for s in both]
        since = None  # the smallest size from which the sparse case wins at every larger compared size
        for index in range(len(both) - 1, -1, -1):
            if not wins[index]:
                break
            since = both[index]
        if not both:
            text = f"not compared (no size where both {case} and {_FUSED_REFERENCE} ran)"
        elif since is None:
            text = f"none up to S={both[-1]}"
        else:
            text = f"from S={since} (compared at S={', '.join(map(str, both))})"
        faster[case] = {"size": since, "largest_compared": both[-1] if both else None, "text": text}
    return {
        "table": table,
        "slopes": slopes,
        f"time_ratio_s{large}_over_s{small}": ratios,
        "nlsa_faster_than_dense_fused": faster,
    }


def _cell(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def format_attention_report(result: dict[str, Any]) -> str:
    """The printed report of a :func:`run_attention_benchmark` result, as one string.

    Contents: the setting (device, CPU model, threads, torch version, repeats);
    per table size, one row per case with time (ms), peak memory added (MiB),
    speed-up (``t_dense_explicit / t``) and memory ratio (``mem / mem_dense_explicit``);
    the log-log slopes; ``time(S=200) / time(S=100)`` per case; the size from
    which each NLSA case is faster than ``dense_fused``; the reasons of
    refused / unavailable / failed cases (once per case).
    """
    settings, env, summary = result["settings"], result["environment"], result["summary"]
    lines = [
        (f"attention forward under no_grad: (1, {settings['channels']}, S, S) float32 on {env['device']} "
         f"({env['device_name']}), {env['torch_threads']} thread(s), torch {env['torch_version']}"),
        (f"time: median of {settings['repeats']} pass(es) after {settings['warmup']} warm-up; "
         f"memory: peak added by the forward pass ({_memory_methods(result)})"),
    ]
    header = f"{'case':<16} {'time (ms)':>10} {'memory (MiB)':>13} {'speed-up':>9} {'mem ratio':>10}"
    for size in settings["sizes"]:
        lines += ["", f"S = {size} ({size * size} positions); ratios against {_DENSE_REFERENCE}", header]
        for row in (r for r in summary["table"] if r["size"] == size):
            if row["status"] != "ok":
                lines.append(f"{row['case']:<16} {row['status']:>10}")
                continue
            speedup = row["speedup_vs_dense_explicit"]
            speedup_text = f"{'-':>9}" if speedup is None else f"{speedup:>8.2f}x"
            lines.append(
                f"{row['case']:<16} {_cell(row['time_ms'], '.2f', 10)} {_cell(row['memory_mib'], '.1f', 13)} "
                f"{speedup_text} {_cell(row['memory_ratio_vs_dense_explicit'], '.3f', 10)}"
            )
    lines += ["", "log-log slope against H*W (time, memory) over every measured size:"]
    for case, slope in summary["slopes"].items():
        if slope["time"] is not None or slope["memory"] is not None:
            lines.append(f"  {case:<16} time {_cell(slope['time'], '.2f', 5)}   memory {_cell(slope['memory'], '.2f', 5)}")
    small, large = _RATIO_SIZES
    ratios = summary[f"time_ratio_s{large}_over_s{small}"]
    nlsa_ratios = {c: v for c, v in ratios.items() if c in _NLSA_ROUNDS}
    if nlsa_ratios:
        lines += ["", f"time(S={large}) / time(S={small}) (x4 positions: 4 if linear, 16 if quadratic):"]
        lines += [f"  {case:<16} {value:.2f}" for case, value in ratios.items()]
    elif any(c in _NLSA_ROUNDS for c in settings["cases"]):
        lines += ["", f"time(S={large}) / time(S={small}): NLSA was not measured at both sizes"]
    if summary["nlsa_faster_than_dense_fused"]:
        lines += ["", f"NLSA faster than {_FUSED_REFERENCE}:"]
        lines += [f"  {case:<16} {v['text']}" for case, v in summary["nlsa_faster_than_dense_fused"].items()]
    notes = {}
    for r in result["measurements"]:
        if r["status"] not in ("ok", "skipped") and r["case"] not in notes:
            notes[r["case"]] = f"{r['status']} at S={r['size']}: {r['reason']}"
    if notes:
        lines += ["", "notes (first problem of each case):"]
        lines += [f"  {case}: {text}" for case, text in notes.items()]
    return "\n".join(lines)


def _memory_methods(result: dict[str, Any]) -> str:
    methods = sorted({r["memory_method"] for r in result["measurements"] if r["memory_method"]})
    return ", ".join(methods) or "none measured"


def plot_attention_benchmark(result: dict[str, Any]):
    """Log-log plot of a :func:`run_attention_benchmark` result: time and memory against H*W.

    Two panels (forward time in ms; peak memory added in MiB) with the number of
    positions ``H*W`` on the x axis, one line per case over every measured size
    with status ``"ok"`` (non-positive memories cannot be drawn on a log axis
    and are left out), the fitted log-log slope of each line in the legend, and
    dotted guides of slope 1 (linear) and 2 (quadratic).

    Returns:
        A ``matplotlib.figure.Figure`` (not registered with pyplot; Jupyter
        shows it as PNG); save it with :func:`srlib.viz.save_figure`.
    """
    import numpy as np
    from matplotlib.ticker import FuncFormatter, NullLocator

    from srlib.viz import _DisplayableFigure

    ok = _ok(result)
    env, settings = result["environment"], result["settings"]
    fig = _DisplayableFigure(figsize=(12, 6.5))
    axes = fig.subplots(1, 2)
    panels = (("time_ms", "forward time (ms)", "time"), ("memory_mib", "peak memory added (MiB)", "memory"))
    for ax, (field, label, slope_key) in zip(axes, panels):
        drawn = []
        for index, case in enumerate(settings["cases"]):
            points = sorted(
                (r["positions"], r[field]) for (c, _), r in ok.items()
                if c == case and r[field] is not None and r[field] > 0
            )
            if not points:
                continue
            slope = result["summary"]["slopes"][case][slope_key]
            name = case if slope is None else f"{case} (slope {slope:.2f})"
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", color=f"C{index % 10}", label=name)
            drawn += points
        if not drawn:
            ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        x0 = min(x for x, _ in drawn)
        x1 = max(x for x, _ in drawn)
        y0 = min(y for _, y in drawn)
        for power, style in ((1, ":"), (2, "--")):
            ax.plot([x0, x1], [y0, y0 * (x1 / x0) ** power], style, color="0.6", linewidth=1,
                    label=f"slope {power} ({'linear' if power == 1 else 'quadratic'})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("positions H*W")
        ax.set_ylabel(label)
        side = ax.secondary_xaxis("top", functions=(np.sqrt, np.square))  # positions = S^2
        side.set_xticks(sorted({round(math.sqrt(x)) for x, _ in drawn}))  # the measured sides
        side.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        side.xaxis.set_minor_locator(NullLocator())
        side.tick_params(labelsize=8)
        side.set_xlabel("map side S (pixels)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle(
        f"attention on (1, {settings['channels']}, S, S) float32, {env['device']} ({env['device_name']}), "
        f"{env['torch_threads']} thread(s), torch {env['torch_version']}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def save_attention_benchmark(result: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``attention_bench.json`` and ``attention_bench.png`` into ``out_dir`` (atomically).

    Args:
        result: a dict from :func:`run_attention_benchmark`.
        out_dir: folder, created if missing; existing files of those names are replaced.

    Returns:
        ``{"json": path, "png": path}``.

    Raises:
        ValueError: ``out_dir`` exists and is not a folder.
    """
    from srlib.utils import atomic_write
    from srlib.viz import save_figure

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder for the benchmark outputs")
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "attention_bench.json"
    with atomic_write(json_path, "w") as handle:
        handle.write(json.dumps(result, indent=2) + "\n")
    png_path = save_figure(plot_attention_benchmark(result), out / "attention_bench.png")
    return {"json": json_path, "png": png_path}


# ----------------------------------------------------------------------------------------------
# Command line: `srlib bench attention` and `python -m srlib.bench attention`
# ----------------------------------------------------------------------------------------------


def add_attention_arguments(parser) -> None:
    """Add the options of ``srlib bench attention`` to an ``argparse`` parser."""
    parser.add_argument("--cases", nargs="+", default=None, metavar="NAME",
                        help=f"cases to measure (default: all): {', '.join(ATTENTION_CASES)}; "
                             f"calibration: {', '.join(CALIBRATION_CASES)}")
    parser.add_argument("--sizes", nargs="+", type=int, default=None, metavar="S",
                        help=f"map sides S of the table (default {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--sweep", nargs="*", type=int, default=None, metavar="S",
                        help=f"map sides of the scaling plot (default {' '.join(map(str, DEFAULT_SWEEP_SIZES))}; "
                             "none: no sweep)")
    parser.add_argument("--repeats", type=int, default=None, help=f"timed passes, median reported (default {DEFAULT_REPEATS})")
    parser.add_argument("--warmup", type=int, default=None, help=f"untimed passes first (default {DEFAULT_WARMUP})")
    parser.add_argument("--channels", type=int, default=64, help="channels C of the (1, C, S, S) input (default 64)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--region-grid", nargs=2, type=int, default=(2, 2), metavar=("ROWS", "COLS"),
                        help="grid of the region case (default 2 2)")
    parser.add_argument("--max-attention-bytes", type=float, default=None, metavar="BYTES",
                        help="memory-guard limit of the dense, region and cross-scale modules "
                             "(default: half the free memory; inf: off)")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="SEC",
                        help="CPU: stop one measurement after SEC seconds (default 1800)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the input (default 0)")
    parser.add_argument("--out", default=".", metavar="DIR",
                        help="folder for attention_bench.json and attention_bench.png (default: .)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: checks that it runs, nothing more")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def attention_command(args) -> int:
    """Run ``srlib bench attention`` from parsed arguments: measure, print, write the files; returns 0.

    Raises:
        ValueError, RuntimeError: bad arguments (see :func:`run_attention_benchmark`),
            or ``--out`` naming a file.
    """
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder for the benchmark outputs")
    result = run_attention_benchmark(
        cases=args.cases, sizes=args.sizes, sweep_sizes=args.sweep, channels=args.channels, repeats=args.repeats,
        warmup=args.warmup, device=args.device, threads=args.threads, region_grid=tuple(args.region_grid),
        max_attention_bytes=args.max_attention_bytes, seed=args.seed, timeout_s=args.timeout,
        quick=True if args.quick else None, progress=not args.no_progress,
    )
    print(format_attention_report(result))
    paths = save_attention_benchmark(result, out)
    print(f"\nwrote {paths['json']} and {paths['png']}")
    return 0


def _module_main(argv: list[str] | None = None) -> int:
    """``python -m srlib.bench attention ...`` (same as ``srlib bench attention ...``) and the hidden worker."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == _WORKER_COMMAND:
        return _worker_main(argv[1:])
    from srlib.cli import main

    return main(["bench", *argv])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_module_main())
