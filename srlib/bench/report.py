"""What the attention benchmark reports: the summary, the printed table, the log-log plot, the files.

Everything here works on the dict of :func:`srlib.bench.run_attention_benchmark`
(or the same dict loaded from ``attention_bench.json``, including files written
before ``"case_details"`` existed: the attention behind each case is then looked
up in the registry).  The summary's references are two cases of attention
``non_local``: ``dense_explicit`` (speed-up ``t_ref / t`` and memory ratio
``mem / mem_ref``) and ``dense_fused`` (the size from which each case of
attention ``nlsa`` - whatever its registered rounds - is faster).

Rates: each measurement's ``gflop`` (its attention's declared arithmetic),
``gflops`` (``gflop`` over the median time) and ``matmul_fraction`` (over the
GEMM rate ``matmul_gflops`` measured in the same run) are shown per case, and
so is the spread of the timed passes: a measurement whose passes vary by more
than the run's ``noise_threshold`` (20%) is marked ``!`` in the table and
listed under ``"noisy"`` in the summary - a busy machine; re-measure it before
committing the figures.  Results saved before these fields existed show ``-``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "DENSE_REFERENCE",
    "FUSED_REFERENCE",
    "SPARSE_ATTENTION",
    "cases_of_attention",
    "format_attention_report",
    "plot_attention_benchmark",
    "save_attention_benchmark",
    "summarise_attention_benchmark",
]

DENSE_REFERENCE = "dense_explicit"  # speed-up and memory ratio are against this case
FUSED_REFERENCE = "dense_fused"  # "faster than" is against this case
SPARSE_ATTENTION = "nlsa"  # the registered attention whose cases get the "faster than" line
_RATIO_SIZES = (100, 200)  # time(S=200) / time(S=100): x4 positions -> 4 if linear, 16 if quadratic


def cases_of_attention(result: dict[str, Any], attention: str) -> list[str]:
    """The cases of ``result["settings"]["cases"]`` that measure the registered attention ``attention``.

    Read from ``result["case_details"]``; a case it does not describe (a result
    saved before that key existed) is looked up in the attention registry
    (:func:`srlib.attention.benchmark_cases`).  Order: that of the settings.
    """
    details = result.get("case_details") or {}
    registered: dict[str, tuple[str, dict]] | None = None
    found = []
    for case in result["settings"]["cases"]:
        if case in details:
            name = details[case].get("attention")
        else:
            if registered is None:
                from srlib.attention import benchmark_cases

                registered = benchmark_cases()
            name = registered[case][0] if case in registered else None
        if name == attention:
            found.append(case)
    return found


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


def summarise_attention_benchmark(result: dict[str, Any]) -> dict[str, Any]:
    """The derived numbers of a benchmark result (its ``"summary"``).

    Args:
        result: a dict with ``"settings"`` (``cases``, ``sizes``) and ``"measurements"``
            (see :func:`srlib.bench.run_attention_benchmark`).

    Returns:
        ``{"table": [...], "slopes": {...}, "time_ratio_s200_over_s100": {...},
        "nlsa_faster_than_dense_fused": {...}, "noisy": [...]}``: one table row per (table size,
        case) with ``time_ms`` (ms), ``time_spread`` and ``noisy`` (see
        :func:`srlib.bench.measure.timing_statistics`), ``memory_mib`` (MiB),
        ``speedup_vs_dense_explicit`` (``t_dense_explicit / t``),
        ``memory_ratio_vs_dense_explicit`` (``mem / mem_dense_explicit``),
        ``gflop``, ``gflops`` and ``matmul_fraction``, None where missing; per case the
        least-squares log-log slopes of time and memory against ``H*W`` over every
        measured size (None with fewer than two sizes); ``time(S=200) / time(S=100)``
        per case measured at both; per case of attention ``nlsa`` the smallest
        size from which it is faster than ``dense_fused`` at every larger
        compared size (``size``, ``largest_compared``, ``text``); ``"noisy"``: every
        ``"ok"`` measurement (table and sweep sizes) whose timed passes spread
        by more than the noise threshold, ``{"case", "size", "time_spread",
        "time_min_ms", "time_max_ms"}``.

    Raises:
        KeyError: a measurement missing for a (case, table size) of the settings.
    """
    ok = _ok(result)
    settings = result["settings"]
    cases = settings["cases"]
    by_key = {(r["case"], r["size"]): r for r in result["measurements"]}
    table = []
    for size in settings["sizes"]:
        ref = ok.get((DENSE_REFERENCE, size))
        for case in cases:
            r = by_key[(case, size)]
            mine = ok.get((case, size))
            table.append({
                "size": size, "case": case, "status": r["status"], "time_ms": r["time_ms"],
                "time_spread": r.get("time_spread"), "noisy": r.get("noisy"),
                "memory_mib": r["memory_mib"],
                "speedup_vs_dense_explicit": _ratio(ref and ref["time_ms"], mine and mine["time_ms"]),
                "memory_ratio_vs_dense_explicit": _ratio(mine and mine["memory_mib"], ref and ref["memory_mib"]),
                "gflop": r.get("gflop"), "gflops": r.get("gflops"), "matmul_fraction": r.get("matmul_fraction"),
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
    for case in cases_of_attention(result, SPARSE_ATTENTION):
        both = [s for s in measured if (case, s) in ok and (FUSED_REFERENCE, s) in ok]
        wins = [ok[(case, s)]["time_ms"] < ok[(FUSED_REFERENCE, s)]["time_ms"] for s in both]
        since = None  # the smallest size from which the sparse case wins at every larger compared size
        for index in range(len(both) - 1, -1, -1):
            if not wins[index]:
                break
            since = both[index]
        if not both:
            text = f"not compared (no size where both {case} and {FUSED_REFERENCE} ran)"
        elif since is None:
            text = f"none up to S={both[-1]}"
        else:
            text = f"from S={since} (compared at S={', '.join(map(str, both))})"
        faster[case] = {"size": since, "largest_compared": both[-1] if both else None, "text": text}
    noisy = [
        {"case": r["case"], "size": r["size"], "time_spread": r.get("time_spread"),
         "time_min_ms": r.get("time_min_ms"), "time_max_ms": r.get("time_max_ms")}
        for r in result["measurements"] if r["status"] == "ok" and r.get("noisy")
    ]
    return {
        "table": table,
        "slopes": slopes,
        f"time_ratio_s{large}_over_s{small}": ratios,
        "nlsa_faster_than_dense_fused": faster,
        "noisy": noisy,
    }


def _cell(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def _percent(value: float | None, width: int, mark: str = "") -> str:
    text = "-" if value is None else f"{100 * value:.0f}%{mark}"
    return f"{text:>{width}}"


def _matmul_line(result: dict[str, Any]) -> str:
    """The report's line on the matmul rate the fractions are against."""
    matmul = result.get("matmul")
    rate = result.get("matmul_gflops")
    if not matmul:
        return "matmul rate: not measured (a result saved before the rate was part of the benchmark)"
    n = matmul["shape"][0]
    if rate is None:
        return f"matmul rate: {n}x{n}x{n} {matmul['dtype']} GEMM failed ({matmul.get('reason')}); no fractions"
    spread = matmul.get("time_spread")
    noisy = " - NOISY, passes vary by more than the threshold" if matmul.get("noisy") else ""
    spread_text = "" if spread is None else f", spread {100 * spread:.0f}%{noisy}"
    return (f"matmul rate: {rate:.1f} GFLOP/s ({n}x{n} @ {n}x{n} {matmul['dtype']} GEMM, median of "
            f"{len(matmul['times_ms'])} pass(es) after warm-up, {matmul['threads']} thread(s){spread_text}); "
            f"GFLOP = 2 x the declared multiply-adds of one pass")


def format_attention_report(result: dict[str, Any]) -> str:
    """The printed report of a :func:`srlib.bench.run_attention_benchmark` result, as one string.

    Contents: the setting (device, CPU model, threads, torch version, repeats)
    and the matmul rate of the run; per table size, one row per case with time
    (ms), the spread of its timed passes (``(max - min) / median``, marked
    ``!`` above the noise threshold), peak memory added (MiB), speed-up
    (``t_dense_explicit / t``), memory ratio (``mem / mem_dense_explicit``),
    GFLOP of one pass, achieved GFLOP/s and their fraction of the matmul rate
    (``-`` where the attention declares no arithmetic); the log-log slopes;
    ``time(S=200) / time(S=100)`` per case; the size from which each NLSA case
    is faster than ``dense_fused``; the noisy measurements; the reasons of
    refused / failed / timed-out cases (once per case).

    Args:
        result: a dict from :func:`srlib.bench.run_attention_benchmark`, or loaded
            from its ``attention_bench.json``.

    Returns:
        The report, lines joined by ``"\\n"`` (no trailing newline).

    Raises:
        KeyError: a dict without ``"settings"``, ``"environment"`` or ``"summary"``.
    """
    settings, env, summary = result["settings"], result["environment"], result["summary"]
    width = max([16, *(len(c) for c in settings["cases"])])  # the case column fits every name
    lines = [
        (f"attention forward under no_grad: (1, {settings['channels']}, S, S) float32 on {env['device']} "
         f"({env['device_name']}), {env['torch_threads']} thread(s), torch {env['torch_version']}"),
        (f"time: median of {settings['repeats']} pass(es) after {settings['warmup']} warm-up; "
         f"memory: peak added by the forward pass ({_memory_methods(result)})"),
        _matmul_line(result),
    ]
    threshold = settings.get("noise_threshold", 0.20)
    header = (f"{'case':<{width}} {'time (ms)':>10} {'spread':>7} {'memory (MiB)':>13} {'speed-up':>9} "
              f"{'mem ratio':>10} {'GFLOP':>9} {'GFLOP/s':>8} {'matmul':>7}")
    for size in settings["sizes"]:
        lines += ["", f"S = {size} ({size * size} positions); ratios against {DENSE_REFERENCE}", header]
        for row in (r for r in summary["table"] if r["size"] == size):
            if row["status"] != "ok":
                lines.append(f"{row['case']:<{width}} {row['status']:>10}")
                continue
            speedup = row["speedup_vs_dense_explicit"]
            speedup_text = f"{'-':>9}" if speedup is None else f"{speedup:>8.2f}x"
            lines.append(
                f"{row['case']:<{width}} {_cell(row['time_ms'], '.2f', 10)} "
                f"{_percent(row.get('time_spread'), 7, '!' if row.get('noisy') else '')} "
                f"{_cell(row['memory_mib'], '.1f', 13)} "
                f"{speedup_text} {_cell(row['memory_ratio_vs_dense_explicit'], '.3f', 10)} "
                f"{_cell(row.get('gflop'), '.3f', 9)} {_cell(row.get('gflops'), '.1f', 8)} "
                f"{_percent(row.get('matmul_fraction'), 7)}"
            )
    lines += ["", "log-log slope against H*W (time, memory) over every measured size:"]
    for case, slope in summary["slopes"].items():
        if slope["time"] is not None or slope["memory"] is not None:
            lines.append(f"  {case:<{width}} time {_cell(slope['time'], '.2f', 5)}   memory {_cell(slope['memory'], '.2f', 5)}")
    small, large = _RATIO_SIZES
    ratios = summary[f"time_ratio_s{large}_over_s{small}"]
    sparse_cases = cases_of_attention(result, SPARSE_ATTENTION)
    if any(c in ratios for c in sparse_cases):
        lines += ["", f"time(S={large}) / time(S={small}) (x4 positions: 4 if linear, 16 if quadratic):"]
        lines += [f"  {case:<{width}} {value:.2f}" for case, value in ratios.items()]
    elif sparse_cases:
        lines += ["", f"time(S={large}) / time(S={small}): NLSA was not measured at both sizes"]
    if summary["nlsa_faster_than_dense_fused"]:
        lines += ["", f"NLSA faster than {FUSED_REFERENCE}:"]
        lines += [f"  {case:<{width}} {v['text']}" for case, v in summary["nlsa_faster_than_dense_fused"].items()]
    noisy = summary.get("noisy") or []
    if noisy:
        lines += ["", (f"NOISY (marked !): the timed passes of these measurements vary by more than "
                       f"{100 * threshold:.0f}% of their median - the machine was busy; re-measure on an idle "
                       "machine before committing these figures:")]
        lines += [f"  {n['case']:<{width}} S={n['size']}: spread {100 * n['time_spread']:.0f}% "
                  f"({n['time_min_ms']:.2f} to {n['time_max_ms']:.2f} ms)" for n in noisy]
    elif settings.get("repeats", 0) < 2 and result["measurements"]:
        lines += ["", ("spread: one timed pass per measurement, so a busy machine cannot be detected "
                       "(use --repeats 3 or more for figures worth committing)")]
    undeclared = sorted({r["case"] for r in result["measurements"] if r["status"] == "ok" and r.get("gflop") is None
                         and "gflop" in r})
    if undeclared:
        lines += ["", f"no declared arithmetic (GFLOP '-'): {', '.join(undeclared)}"]
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
    """Log-log plot of a :func:`srlib.bench.run_attention_benchmark` result: time and memory against H*W.

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
    from matplotlib import colormaps
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
            color = f"C{index}" if len(settings["cases"]) <= 10 else colormaps["tab20"](index % 20)
            ax.plot(xs, ys, marker="os^vD"[index // 10 % 5], color=color, label=name)
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
        result: a dict from :func:`srlib.bench.run_attention_benchmark`.
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
