"""Benchmarks: forward time and peak memory of the attention modules.

``srlib bench attention`` (also ``python -m srlib.bench attention``) runs each
benchmark case on a random ``(1, C, S, S)`` float32 feature map under
``torch.no_grad()`` and records

* **time**: the median, in milliseconds, of ``repeats`` forward passes after
  ``warmup`` passes that are not timed (on CUDA each pass is bracketed by
  ``torch.cuda.synchronize``);
* **peak memory**: what the forward pass *adds* on top of the module and its
  input, in MiB (2^20 bytes), the output included;
* **spread**: ``(max - min) / median`` of the timed passes; a measurement
  whose passes vary by more than :data:`NOISE_THRESHOLD` (20%) is flagged
  ``noisy`` (a busy machine: its figure must be re-measured before it is
  committed); with one pass the spread is unknown (``null``);
* **arithmetic and rate**: ``gflop``, the FLOPs of one pass (2 per
  multiply-add) from the multiply-adds its attention declares
  (``register_attention(..., multiply_adds=fn)``, counted from the
  mechanism's equations; ``null`` for an attention that declares none),
  ``gflops = gflop / (time_ms / 1000)`` and ``matmul_fraction = gflops /
  matmul_gflops``;
* **matmul rate** (``matmul_gflops``, once per run, before the cases): the
  median rate of a square GEMM ``(n, n) @ (n, n)`` (``n`` = 1024 on CPU, 4096
  on CUDA; :data:`MATMUL_SIZES`) in the cases' dtype, on their device, with
  their thread count, after a warm-up, at least :data:`MATMUL_MIN_REPEATS`
  passes; on CPU in a fresh process with the cases' environment.  It is what
  this machine's matrix products reach; the fraction says how close each
  attention path comes to it (it can exceed 1 for products that suit the
  hardware better than the square GEMM).

The cases come from the attention registry (:mod:`srlib.attention.registry`):
each registration declares its own (``bench={"case_name": {options}}``), so a
newly registered attention is measured without touching this package; a module
class that is not part of srlib is measured with ``--module FILE.py:Class`` (see
:mod:`srlib.bench.cases`).

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

A case the memory guard of a guarded attention refuses
(:class:`~srlib.attention.AttentionMemoryError`) is recorded with status
``"refused"`` and the guard's message; other outcomes are ``"failed"`` (the
module could not be built or its forward raised; the reason is recorded),
``"timeout"``, ``"out_of_memory"`` and ``"skipped"`` (larger sizes after a
timeout or an out-of-memory).  The run itself never stops on one case.

Layout:

* :mod:`srlib.bench.cases` - what is measured (registry cases, external modules, calibration);
* :mod:`srlib.bench.measure` - timing, memory, the fresh-process worker, :func:`run_attention_benchmark`;
* :mod:`srlib.bench.report` - summary, printed table, log-log plot, files.

The command line (``srlib bench attention``) is in :mod:`srlib.cli`.

Public API: :func:`run_attention_benchmark` (returns a dict, written as
``attention_bench.json``), :func:`measure_matmul` (the GEMM rate),
:func:`timing_statistics` (median, spread, noisy flag),
:func:`format_attention_report` (the printed table), :func:`plot_attention_benchmark` (the log-log figure,
``attention_bench.png``), :func:`save_attention_benchmark`,
:func:`summarise_attention_benchmark`, :func:`attention_cases`,
:func:`build_attention_case` and :data:`CALIBRATION_CASES`.
"""

from srlib.bench.cases import (
    CALIBRATION_CASES,
    REFERENCE_COUNT,
    BenchCase,
    attention_cases,
    build_attention_case,
    build_case,
    case_multiply_adds,
    import_module_class,
    known_case_names,
    resolve_cases,
)
from srlib.bench.measure import (
    DEFAULT_REPEATS,
    DEFAULT_SIZES,
    DEFAULT_SWEEP_SIZES,
    DEFAULT_WARMUP,
    MATMUL_MIN_REPEATS,
    MATMUL_SIZES,
    NOISE_THRESHOLD,
    QUICK_MATMUL_SIZE,
    QUICK_REPEATS,
    QUICK_SIZES,
    QUICK_SWEEP_SIZES,
    QUICK_WARMUP,
    add_rates,
    measure_in_subprocess,
    measure_matmul,
    measure_matmul_in_subprocess,
    measure_one,
    run_attention_benchmark,
    timing_statistics,
)
from srlib.bench.report import (
    DENSE_REFERENCE,
    FUSED_REFERENCE,
    format_attention_report,
    plot_attention_benchmark,
    save_attention_benchmark,
    summarise_attention_benchmark,
)

__all__ = [
    "CALIBRATION_CASES",
    "DEFAULT_REPEATS",
    "DEFAULT_SIZES",
    "DEFAULT_SWEEP_SIZES",
    "DEFAULT_WARMUP",
    "DENSE_REFERENCE",
    "FUSED_REFERENCE",
    "MATMUL_MIN_REPEATS",
    "MATMUL_SIZES",
    "NOISE_THRESHOLD",
    "QUICK_MATMUL_SIZE",
    "QUICK_REPEATS",
    "QUICK_SIZES",
    "QUICK_SWEEP_SIZES",
    "QUICK_WARMUP",
    "REFERENCE_COUNT",
    "BenchCase",
    "add_rates",
    "attention_cases",
    "build_attention_case",
    "build_case",
    "case_multiply_adds",
    "format_attention_report",
    "import_module_class",
    "known_case_names",
    "measure_in_subprocess",
    "measure_matmul",
    "measure_matmul_in_subprocess",
    "measure_one",
    "plot_attention_benchmark",
    "resolve_cases",
    "run_attention_benchmark",
    "save_attention_benchmark",
    "summarise_attention_benchmark",
    "timing_statistics",
]
