"""How the attention benchmark measures: timing, peak memory, one fresh process per (case, size) on CPU.

* :func:`measure_one` - build, warm up, time and measure one (case, size) in
  this process (used directly on CUDA, and by the worker process on CPU);
* :func:`measure_in_subprocess` - the same in a fresh
  ``python -m srlib.bench _measure-one SPEC_JSON`` process, which prints its
  record as one JSON line (:func:`worker_main`);
* :func:`measure_matmul` - the machine's matrix-product rate (a float32
  GEMM) under the same settings, the reference of ``matmul_fraction``
  (:func:`measure_matmul_in_subprocess` on CPU);
* :func:`run_attention_benchmark` - the matmul rate, then every case at every
  size, the settings, the environment and the summary (:mod:`srlib.bench.report`).

The method (median after warm-up; CUDA peak from ``max_memory_allocated``;
CPU peak from ``/proc/self/status`` after resetting ``VmHWM``; arithmetic from
each attention's declared multiply-adds; the spread of the timed passes) is
described in the docstring of :mod:`srlib.bench`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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

from srlib.bench.cases import (
    BenchCase,
    build_case,
    case_inputs,
    case_multiply_adds,
    resolve_cases,
)

__all__ = [
    "DEFAULT_REPEATS",
    "DEFAULT_SIZES",
    "DEFAULT_SWEEP_SIZES",
    "DEFAULT_WARMUP",
    "MATMUL_MIN_REPEATS",
    "MATMUL_SIZES",
    "NOISE_THRESHOLD",
    "QUICK_MATMUL_SIZE",
    "QUICK_REPEATS",
    "QUICK_SIZES",
    "QUICK_SWEEP_SIZES",
    "QUICK_WARMUP",
    "WORKER_COMMAND",
    "add_rates",
    "measure_in_subprocess",
    "measure_matmul",
    "measure_matmul_in_subprocess",
    "measure_one",
    "run_attention_benchmark",
    "timing_statistics",
    "worker_main",
]

DEFAULT_SIZES = (100, 150)  # NLSN supplement Table 2
DEFAULT_SWEEP_SIZES = (25, 50, 75, 100, 125, 150, 200)
QUICK_SIZES = (8, 16)
QUICK_SWEEP_SIZES = (8, 16)
DEFAULT_REPEATS, DEFAULT_WARMUP = 10, 2
QUICK_REPEATS, QUICK_WARMUP = 1, 1
# A measurement whose timed passes spread by more than this fraction of their median,
# (max - min) / median, is flagged "noisy": the machine was busy, re-measure before committing it.
NOISE_THRESHOLD = 0.20
# Side n of the square float32 GEMM (n x n) @ (n x n) that measures the matmul rate: 2 n^3 FLOP per pass,
# 2.1 GFLOP on CPU (about one dense-attention pass at S = 64), 137 GFLOP on CUDA.
MATMUL_SIZES = {"cpu": 1024, "cuda": 4096}
QUICK_MATMUL_SIZE = 256
MATMUL_MIN_REPEATS = 5  # the matmul is timed at least this many times (it is cheap)

WORKER_COMMAND = "_measure-one"  # hidden: `python -m srlib.bench _measure-one SPEC_JSON`
_RESULT_PREFIX = "SRLIB_BENCH_RESULT "  # the worker's one line of JSON on stdout starts with this
_MIB = float(2**20)
_STOPPING_STATUSES = ("timeout", "out_of_memory")  # larger sizes of that case are then skipped
_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this very srlib package


# ----------------------------------------------------------------------------------------------
# Memory of this process
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


# ----------------------------------------------------------------------------------------------
# One measurement, in this process
# ----------------------------------------------------------------------------------------------


def _timed_passes(module: nn.Module, inputs: tuple, count: int, budget_ms: float | None = None) -> list[float]:
    """Run ``count`` forward passes ``module(*inputs)``; return each one's wall time in ms (CUDA: synchronised).

    With ``budget_ms``, stop early once the passes so far have taken that long (at least one pass runs).
    """
    device = inputs[0].device
    cuda = device.type == "cuda"
    times: list[float] = []
    for _ in range(count):
        if budget_ms is not None and times and sum(times) >= budget_ms:
            break
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = module(*inputs)
        if cuda:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
        del out  # not held while the next pass runs
    return times


def _time_and_memory(module: nn.Module, inputs: tuple, repeats: int, warmup: int,
                     budget_ms: float | None = None) -> dict[str, Any]:
    """Times of the ``repeats`` passes after ``warmup`` ones, and the memory the passes add (bytes).

    ``budget_ms``: the timed passes stop once they have taken this long (at least one runs).
    """
    device = inputs[0].device
    if device.type == "cuda":
        _timed_passes(module, inputs, warmup)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        times = _timed_passes(module, inputs, repeats, budget_ms)
        peak = torch.cuda.max_memory_allocated(device)
        return {"times_ms": times, "memory_bytes": peak - before, "memory_method": "cuda_max_memory_allocated",
                "baseline_bytes": before}
    _release_free_heap()
    if _reset_resident_peak():
        _timed_passes(module, inputs, warmup)
        _release_free_heap()
        before = _proc_status_bytes("VmRSS")
        _reset_resident_peak()
        times = _timed_passes(module, inputs, repeats, budget_ms)
        peak = _proc_status_bytes("VmHWM")
        return {"times_ms": times, "memory_bytes": max(peak - before, 0), "memory_method": "proc_clear_refs",
                "baseline_bytes": before}
    # No resettable peak: read the lifetime peak around a first, untimed pass, then time as usual.
    before = _lifetime_peak_bytes()
    _timed_passes(module, inputs, 1)
    after = _lifetime_peak_bytes()
    _timed_passes(module, inputs, warmup)
    times = _timed_passes(module, inputs, repeats, budget_ms)
    if before is None or after is None:
        return {"times_ms": times, "memory_bytes": None, "memory_method": "unavailable", "baseline_bytes": None}
    return {"times_ms": times, "memory_bytes": max(after - before, 0), "memory_method": "ru_maxrss",
            "baseline_bytes": before}


def timing_statistics(times_ms: Sequence[float], threshold: float = NOISE_THRESHOLD) -> dict[str, Any]:
    """Median and spread of timed passes, and whether they vary too much to be trusted.

    Args:
        times_ms: the wall time of each timed pass, ms (at least one).
        threshold: the largest relative spread accepted (default :data:`NOISE_THRESHOLD`, 20%).

    Returns:
        ``time_ms`` (median), ``time_min_ms``, ``time_max_ms``, ``time_spread``
        (``(max - min) / median``, a fraction; None with fewer than two passes)
        and ``noisy`` (``time_spread > threshold``; None with fewer than two
        passes: one pass cannot show a busy machine).

    Raises:
        ValueError: no times.
    """
    times = [float(t) for t in times_ms]
    if not times:
        raise ValueError("timing_statistics needs at least one timed pass")
    median = statistics.median(times)
    spread = (max(times) - min(times)) / median if len(times) > 1 and median > 0 else None
    return {"time_ms": median, "time_min_ms": min(times), "time_max_ms": max(times), "time_spread": spread,
            "noisy": None if spread is None else spread > threshold}


def add_rates(record: dict[str, Any], matmul_gflops: float | None) -> dict[str, Any]:
    """Fill ``gflops`` (``gflop / seconds``) and ``matmul_fraction`` (``gflops / matmul_gflops``) of a record, in place.

    Either is None when its inputs are missing (no declared arithmetic, no
    time, no matmul rate).  Returns the record.
    """
    gflop, time_ms = record.get("gflop"), record.get("time_ms")
    record["gflops"] = gflop / (time_ms / 1000.0) if gflop is not None and time_ms else None
    rate = record["gflops"]
    record["matmul_fraction"] = rate / matmul_gflops if rate is not None and matmul_gflops else None
    return record


def _new_record(spec: dict[str, Any]) -> dict[str, Any]:
    size = spec["size"]
    return {
        "case": spec["case"], "size": size, "positions": size * size, "status": None, "time_ms": None,
        "times_ms": [], "time_min_ms": None, "time_max_ms": None, "time_spread": None, "noisy": None,
        "memory_mib": None, "memory_method": None, "baseline_mib": None, "multiply_adds": None, "gflop": None,
        "gflops": None, "matmul_fraction": None, "reason": None,
    }


_SPEC_DEFAULTS = {"channels": 64, "repeats": DEFAULT_REPEATS, "warmup": DEFAULT_WARMUP, "device": "cpu",
                  "threads": 1, "seed": 0, "region_grid": None, "max_attention_bytes": None, "probe_mib": 200.0,
                  "max_seconds": None}


def measure_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, warm up, time and measure one (case, size) in this process; never raises for the case itself.

    Args:
        spec: a JSON-ready dict: the case (the keys of
            :meth:`srlib.bench.cases.BenchCase.to_spec`, or just ``"case"``: a
            registered or calibration name), ``size`` (S of the ``(1, C, S, S)``
            float32 input), and optionally ``channels`` (64), ``repeats`` (10),
            ``warmup`` (2), ``device`` (``"cpu"``), ``threads`` (1), ``seed`` (0),
            ``region_grid`` (None: as registered), ``max_attention_bytes``
            (None: the guard's default; ``"inf"``: off), ``probe_mib`` (200) and
            ``max_seconds`` (None: time every repeat; else stop the timed passes
            once they have taken this many seconds, at least one pass).

    Returns:
        One record: ``case, size, positions, status, time_ms`` (median, ms),
        ``times_ms``, ``time_min_ms``, ``time_max_ms``, ``time_spread``,
        ``noisy`` (:func:`timing_statistics`), ``memory_mib`` (peak added,
        MiB), ``memory_method``, ``baseline_mib``, ``multiply_adds`` and
        ``gflop`` (the case's declared arithmetic, ``2 * multiply_adds / 1e9``;
        None when it declares none), ``gflops`` (``gflop / seconds``),
        ``matmul_fraction`` (None here: :func:`run_attention_benchmark` fills it
        in) and ``reason`` (see :func:`run_attention_benchmark`).

    Raises:
        KeyError: ``spec`` without ``"case"`` or ``"size"``.
        ValueError: a ``"case"`` name that is neither registered nor calibration
            (only when ``spec`` has no ``"source"``).
    """
    from srlib.attention import AttentionMemoryError

    spec = {**_SPEC_DEFAULTS, **spec}
    case = BenchCase.from_spec(spec) if "source" in spec else resolve_cases([spec["case"]])[0]
    record = _new_record(spec)
    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    limit = spec["max_attention_bytes"]
    grid = spec["region_grid"]
    try:
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's generator
            torch.manual_seed(spec["seed"])
            module = build_case(
                case, spec["channels"], region_grid=None if grid is None else tuple(grid),
                max_attention_bytes=math.inf if limit == "inf" else limit, probe_mib=spec["probe_mib"],
            )
    except Exception as exc:  # noqa: BLE001 - any failure of one case is recorded, the run goes on
        return {**record, "status": "failed", "reason": f"building the module: {type(exc).__name__}: {exc}"}
    module = module.to(device).eval()
    generator = torch.Generator().manual_seed(spec["seed"])
    size = spec["size"]
    x = torch.randn((1, spec["channels"], size, size), generator=generator).to(device)  # (1, C, S, S) float32
    inputs = case_inputs(case, x, generator)  # (x,) or (x, [K references of x's shape])
    arithmetic: dict[str, Any] = {}
    try:  # the declared multiply-adds of one pass on this input (None: the attention declares none)
        reference_shapes = [tuple(r.shape) for r in inputs[1]] if len(inputs) > 1 else None
        multiply_adds = case_multiply_adds(case, module, tuple(x.shape), reference_shapes)
        arithmetic = {"multiply_adds": multiply_adds, "gflop": None if multiply_adds is None else 2 * multiply_adds / 1e9}
    except Exception as exc:  # noqa: BLE001 - a faulty declaration must not cost the measurement
        arithmetic = {"reason": f"the declared arithmetic failed: {type(exc).__name__}: {exc}"}
    try:
        with torch.no_grad():
            budget = spec["max_seconds"]
            measured = _time_and_memory(module, inputs, spec["repeats"], spec["warmup"],
                                        None if budget is None else 1000.0 * budget)
    except AttentionMemoryError as exc:  # the guard refused before allocating
        return {**record, "status": "refused", "reason": str(exc)}
    except (torch.OutOfMemoryError, MemoryError) as exc:
        return {**record, "status": "out_of_memory", "reason": f"{type(exc).__name__}: {exc}".strip()}
    except Exception as exc:  # noqa: BLE001 - any failure of one case is recorded, the run goes on
        return {**record, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        del module, x, inputs
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    memory = measured["memory_bytes"]
    baseline = measured["baseline_bytes"]
    return add_rates({
        **record,
        **arithmetic,
        "status": "ok",
        **timing_statistics(measured["times_ms"]),
        "times_ms": measured["times_ms"],
        "memory_mib": None if memory is None else memory / _MIB,
        "memory_method": measured["memory_method"],
        "baseline_mib": None if baseline is None else baseline / _MIB,
    }, None)


# ----------------------------------------------------------------------------------------------
# The machine's matmul rate, in the same settings
# ----------------------------------------------------------------------------------------------


def measure_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    """Time a square GEMM ``(n, n) @ (n, n)`` in this process: the matrix-product rate the cases are compared with.

    Args:
        spec: a JSON-ready dict: ``matmul_size`` (n), and optionally ``dtype``
            (``"float32"``), ``device`` (``"cpu"``), ``threads`` (1), ``repeats``
            and ``warmup`` (at least :data:`MATMUL_MIN_REPEATS` timed passes and
            one warm-up pass are run), ``seed`` (0).

    Returns:
        ``{"status", "shape": [n, n, n], "dtype", "device", "threads", "gflop"``
        (``2 n^3 / 1e9`` per pass), ``"times_ms"``, the keys of
        :func:`timing_statistics` and ``"gflops"`` (``gflop`` over the median
        time in seconds), ``"reason"``}; status ``"failed"`` (with the reason,
        no rate) when the product could not run.  Never raises for the product.

    Raises:
        KeyError: ``spec`` without ``"matmul_size"``.
    """
    size = int(spec["matmul_size"])
    dtype_name = str(spec.get("dtype", "float32"))
    threads = int(spec.get("threads", 1))
    record: dict[str, Any] = {
        "status": None, "shape": [size, size, size], "dtype": dtype_name, "device": str(spec.get("device", "cpu")),
        "threads": threads, "gflop": 2 * size**3 / 1e9, "times_ms": [], "time_ms": None, "time_min_ms": None,
        "time_max_ms": None, "time_spread": None, "noisy": None, "gflops": None, "reason": None,
    }
    repeats = max(int(spec.get("repeats", MATMUL_MIN_REPEATS)), MATMUL_MIN_REPEATS)
    warmup = max(int(spec.get("warmup", 1)), 1)
    torch.set_num_threads(threads)
    try:
        device = torch.device(record["device"])
        dtype = getattr(torch, dtype_name)
        generator = torch.Generator().manual_seed(int(spec.get("seed", 0)))
        a = torch.randn((size, size), generator=generator).to(device=device, dtype=dtype)  # (n, n)
        b = torch.randn((size, size), generator=generator).to(device=device, dtype=dtype)  # (n, n)
        product = _MatrixProduct()
        with torch.no_grad():
            _timed_passes(product, (a, b), warmup)
            times = _timed_passes(product, (a, b), repeats)
    except Exception as exc:  # noqa: BLE001 - the benchmark goes on without a rate
        return {**record, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    stats = timing_statistics(times)
    return {**record, "status": "ok", "times_ms": times, **stats, "gflops": record["gflop"] / (stats["time_ms"] / 1000.0)}


class _MatrixProduct(nn.Module):
    """``forward(a, b) = a @ b``: the GEMM timed by :func:`measure_matmul` with the cases' timing loop."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b  # (n, n)


# ----------------------------------------------------------------------------------------------
# One measurement in a fresh process (CPU)
# ----------------------------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    """Entry of ``python -m srlib.bench _measure-one SPEC_JSON``: measure, print the record as one JSON line.

    Args:
        argv: ``[SPEC_JSON]``, the spec of :func:`measure_one` as a JSON string
            (with ``"task": "matmul"``: the spec of :func:`measure_matmul`).

    Returns:
        0; 2 (with a usage line on stderr) when ``argv`` is not one argument.
    """
    if len(argv) != 1:
        print(f"usage: python -m srlib.bench {WORKER_COMMAND} SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    record = measure_matmul(spec) if spec.get("task") == "matmul" else measure_one(spec)
    print(_RESULT_PREFIX + json.dumps(record), flush=True)
    return 0


def _run_worker(spec: dict[str, Any], timeout_s: float | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Run ``python -m srlib.bench _measure-one SPEC_JSON`` in a fresh process with ``spec["threads"]`` threads.

    Returns ``(record, None)`` with the worker's record, or ``(None, failure)``
    with ``failure`` holding ``status`` (``"timeout"``, ``"out_of_memory"`` or
    ``"failed"``) and ``reason``.
    """
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec.get("threads", 1))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPOSITORY_ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "srlib.bench", WORKER_COMMAND, json.dumps(spec)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return None, {"status": "timeout", "reason": f"no result within {timeout_s:g} s (raise --timeout)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX):]), {}
    if proc.returncode < 0:
        signal_number = -proc.returncode
        likely = " - most likely the kernel's out-of-memory killer" if signal_number == 9 else ""
        return None, {"status": "out_of_memory" if signal_number == 9 else "failed",
                      "reason": f"the measuring process was killed by signal {signal_number}{likely}"}
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:]) or "no output"
    return None, {"status": "failed", "reason": f"the measuring process exited with {proc.returncode}: {tail}"}


def measure_in_subprocess(spec: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    """:func:`measure_one` in a fresh ``python -m srlib.bench _measure-one`` process; returns its record.

    The process gets ``OMP_NUM_THREADS = MKL_NUM_THREADS = spec["threads"]`` and
    this srlib first on ``PYTHONPATH``; it imports the case's external module
    files itself (``spec["imports"]``).

    Args:
        spec: as for :func:`measure_one`, JSON-serialisable (``"inf"`` for an infinite limit).
        timeout_s: seconds before the process is stopped (status ``"timeout"``); None: no limit.

    Returns:
        The worker's record; or one with status ``"timeout"``, ``"out_of_memory"``
        (killed by signal 9, most likely the kernel's OOM killer) or ``"failed"``
        (the exit status and the last lines of stderr in ``reason``).
    """
    record, failure = _run_worker(spec, timeout_s)
    return record if record is not None else {**_new_record(spec), **failure}


def measure_matmul_in_subprocess(spec: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    """:func:`measure_matmul` in a fresh worker process, with the threads and environment of the cases.

    Returns the worker's record, or one with status ``"timeout"``,
    ``"out_of_memory"`` or ``"failed"`` and no rate (see :func:`measure_in_subprocess`).
    """
    record, failure = _run_worker({**spec, "task": "matmul"}, timeout_s)
    if record is not None:
        return record
    size = int(spec["matmul_size"])
    return {"status": failure["status"], "shape": [size, size, size], "dtype": spec.get("dtype", "float32"),
            "device": spec.get("device", "cpu"), "threads": spec.get("threads", 1), "gflop": 2 * size**3 / 1e9,
            "times_ms": [], "time_ms": None, "time_min_ms": None, "time_max_ms": None, "time_spread": None,
            "noisy": None, "gflops": None, "reason": failure["reason"]}


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
    modules: Sequence[str] | None = None,
    channels: int = 64,
    repeats: int | None = None,
    warmup: int | None = None,
    device: str | torch.device = "auto",
    threads: int | None = None,
    region_grid: tuple[int, int] | None = None,
    max_attention_bytes: float | None = None,
    probe_mib: float = 200.0,
    seed: int = 0,
    timeout_s: float | None = 1800.0,
    quick: bool | None = None,
    progress: bool = True,
    matmul_size: int | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Forward time, peak memory and arithmetic rate of attention modules on ``(1, C, S, S)`` float32 maps.

    First the machine's matrix-product rate is measured with the settings of
    the cases (a square GEMM of side ``matmul_size``, same device, dtype and
    threads; on CPU in a fresh process with the same environment), then every
    case at every size of ``sizes`` (the table) and ``sweep_sizes`` (the
    scaling plot), each size once.  How time and memory are measured is
    described in the docstring of :mod:`srlib.bench`: CUDA in this process,
    CPU in a fresh process per (case, size).

    Args:
        cases: case names: the registered ones (:func:`srlib.bench.attention_cases`,
            declared by each attention's ``bench=``) or calibration ones
            (:data:`srlib.bench.CALIBRATION_CASES`).  None: every registered case.
            ``[]`` with ``modules``: only the external modules.
        sizes: map sides S of the table (default :data:`DEFAULT_SIZES`,
            ``(100, 150)`` as in NLSN supplement Table 2).
        sweep_sizes: map sides of the scaling plot (default
            :data:`DEFAULT_SWEEP_SIZES`); ``[]`` for none.
        modules: external module classes, ``"path/to/file.py:Class"`` or
            ``"package.module:Class"``, each built as ``Class(channels)``,
            called as ``forward(x)`` and named after its class; measured after
            ``cases``.  Attentions their files register become cases too.
        channels: C of the input map (64 as in NLSN Table 2).
        repeats: timed forward passes per (case, size); the median is reported
            (default 10, quick 1).
        warmup: untimed passes before them (default 2, quick 1).
        device: ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        threads: ``torch.set_num_threads`` for the measurement (default: every
            core this process may use); recorded in the result.
        region_grid: ``(rows, cols)`` replacing the ``regions`` option of the
            cases whose attention has one (None: as registered, 2 x 2).
        max_attention_bytes: memory-guard limit passed to the guarded attentions
            (None: their default, half the free memory; ``math.inf``: off).
        probe_mib: MiB allocated by the ``"memory_probe"`` calibration case.
        seed: seeds the module weights and the random input (and references).
        timeout_s: CPU only: a measurement still running after this many
            seconds is stopped (status ``"timeout"``; larger sizes of that case
            are then skipped); None for no limit.
        quick: tiny sizes (:data:`QUICK_SIZES`, :data:`QUICK_SWEEP_SIZES`), one
            repeat, one warm-up - for tests; arguments given explicitly win.
            None: on when the environment variable ``SRLIB_QUICK`` is set.
        progress: show a ``tqdm`` bar over the cases.
        matmul_size: side ``n`` of the ``(n, n) @ (n, n)`` GEMM that measures
            the matmul rate (default :data:`MATMUL_SIZES` of the device, 1024 on
            CPU; :data:`QUICK_MATMUL_SIZE` in quick mode).
        max_seconds: time budget of one measurement's timed passes, seconds:
            once the passes so far have taken this long no more are started (at
            least one pass; the record's ``times_ms`` shows how many ran).  For
            sizes where one pass takes minutes; None: always ``repeats`` passes.

    Returns:
        A JSON-ready dict: ``"benchmark"``, ``"settings"`` (the arguments used),
        ``"environment"`` (device, CPU model, torch version, threads...),
        ``"matmul_gflops"`` (the measured GEMM rate, GFLOP/s; None if it
        failed), ``"matmul"`` (its record, :func:`measure_matmul`),
        ``"cases"`` (name -> description), ``"case_details"`` (name -> source,
        kind, attention name, options, module spec), ``"measurements"`` (one
        record per (case, size): ``case, size, positions = S*S, status, time_ms``
        (median, ms), ``times_ms`` (every timed pass, ms), ``time_min_ms``,
        ``time_max_ms``, ``time_spread`` (``(max - min) / median``) and
        ``noisy`` (spread above :data:`NOISE_THRESHOLD`; None with one pass),
        ``memory_mib`` (peak added, MiB), ``memory_method``, ``baseline_mib``,
        ``multiply_adds`` and ``gflop`` (declared arithmetic of one pass,
        ``gflop = 2 * multiply_adds / 1e9``; None for a case whose attention
        declares none), ``gflops`` (``gflop / (time_ms / 1000)``),
        ``matmul_fraction`` (``gflops / matmul_gflops``), ``reason``), and
        ``"summary"`` (:func:`srlib.bench.report.summarise_attention_benchmark`).
        ``status`` is ``"ok"``, ``"refused"`` (memory guard; ``reason`` is its
        message), ``"failed"``, ``"timeout"``, ``"out_of_memory"`` or
        ``"skipped"``; only ``"ok"`` records have a time and a rate.

    Raises:
        ValueError: an unknown case (the message lists the known ones); a module
            spec that cannot be imported; sizes, repeats, warm-up, channels,
            threads, grid, limits or ``matmul_size`` that are not positive
            (warm-up may be 0); no sizes or no cases at all.
        RuntimeError: ``device="cuda"`` where CUDA is not available.
    """
    from srlib.bench.report import summarise_attention_benchmark
    from srlib.utils import quick_mode

    quick = quick_mode() if quick is None else bool(quick)
    chosen = resolve_cases(cases, modules)
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
    if region_grid is not None:
        try:
            rows, cols = region_grid
            region_grid = (_positive_int("region_grid rows", rows), _positive_int("region_grid cols", cols))
        except (TypeError, ValueError):
            raise ValueError(
                f"region_grid must be a pair (rows, cols) of positive integers or None, got {region_grid!r}"
            ) from None
    for name, value in (("max_attention_bytes", max_attention_bytes), ("timeout_s", timeout_s),
                        ("max_seconds", max_seconds)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0):
            raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    if isinstance(probe_mib, bool) or not isinstance(probe_mib, numbers.Real) or not probe_mib >= 0:
        raise ValueError(f"probe_mib must be a number >= 0, got {probe_mib!r}")
    run_device = _resolve_device(device)
    if matmul_size is None:
        matmul_size = QUICK_MATMUL_SIZE if quick else MATMUL_SIZES.get(run_device.type, MATMUL_SIZES["cpu"])
    matmul_size = _positive_int("matmul_size", matmul_size)

    from tqdm.auto import tqdm

    if max_attention_bytes is None:
        limit: float | str | None = None
    else:  # JSON has no infinity: an "inf" string tells the worker to turn the guard off
        limit = "inf" if math.isinf(max_attention_bytes) else float(max_attention_bytes)
    probe_mib = float(probe_mib)
    grid = None if region_grid is None else list(region_grid)
    settings = {
        "cases": [c.name for c in chosen], "modules": [c.module for c in chosen if c.source == "module"],
        "sizes": table_sizes, "sweep_sizes": sweep, "channels": channels, "batch": 1,
        "dtype": "float32", "repeats": repeats, "warmup": warmup, "threads": threads, "region_grid": grid,
        "max_attention_bytes": limit, "probe_mib": probe_mib, "seed": seed, "timeout_s": timeout_s, "quick": quick,
        "isolation": "in-process" if run_device.type == "cuda" else "fresh process per (case, size)",
        "matmul_size": matmul_size, "noise_threshold": NOISE_THRESHOLD, "max_seconds": max_seconds,
    }
    measured_sizes = sorted(set(table_sizes) | set(sweep))
    records: list[dict[str, Any]] = []
    previous_threads = torch.get_num_threads()
    matmul_spec = {"matmul_size": matmul_size, "dtype": settings["dtype"], "device": str(run_device),
                   "threads": threads, "repeats": repeats, "warmup": warmup, "seed": seed}
    if run_device.type == "cuda":
        matmul = measure_matmul(matmul_spec)
    else:
        matmul = measure_matmul_in_subprocess(matmul_spec, timeout_s)
    matmul_gflops = matmul["gflops"] if matmul["status"] == "ok" else None
    bar = tqdm(chosen, desc="attention bench", unit="case", disable=not progress)
    try:
        for case in bar:
            stopped: str | None = None
            for size in measured_sizes:
                bar.set_postfix_str(f"{case.name} S={size}")
                spec = {
                    **case.to_spec(), "size": size, "channels": channels, "repeats": repeats, "warmup": warmup,
                    "device": str(run_device), "threads": threads, "seed": seed, "region_grid": grid,
                    "max_attention_bytes": limit, "probe_mib": probe_mib, "max_seconds": max_seconds,
                }
                if stopped is not None:
                    record = {**_new_record(spec), "status": "skipped", "reason": stopped}
                elif run_device.type == "cuda":
                    record = measure_one(spec)
                else:
                    record = measure_in_subprocess(spec, timeout_s)
                if record["status"] in _STOPPING_STATUSES and stopped is None:
                    stopped = f"not run: {record['status']} at the smaller size S={size}"
                records.append(add_rates(record, matmul_gflops))
    finally:
        bar.close()
        torch.set_num_threads(previous_threads)
    result = {
        "benchmark": "attention",
        "settings": settings,
        "environment": _environment(run_device, threads),
        "matmul_gflops": matmul_gflops,
        "matmul": matmul,
        "cases": {c.name: c.description for c in chosen},
        "case_details": {c.name: c.details() for c in chosen},
        "measurements": records,
    }
    result["summary"] = summarise_attention_benchmark(result)
    return result
