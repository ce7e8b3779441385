"""The attention benchmark: cases come from the registry (and --module files), every case is recorded,
the memory measurement sees a known allocation, refusals are recorded instead of raised, the command
writes its files; every measurement carries its declared arithmetic, its rate against the matmul rate
of the same run and the spread of its timed passes (a noisy one is flagged)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import srlib.bench
from srlib.attention import register_attention
from srlib.attention.registry import ATTENTION, attention_entry, attention_multiply_adds
from srlib.bench import (
    CALIBRATION_CASES,
    NOISE_THRESHOLD,
    QUICK_MATMUL_SIZE,
    QUICK_SIZES,
    QUICK_SWEEP_SIZES,
    add_rates,
    attention_cases,
    build_attention_case,
    format_attention_report,
    measure_matmul,
    measure_one,
    plot_attention_benchmark,
    resolve_cases,
    run_attention_benchmark,
    summarise_attention_benchmark,
    timing_statistics,
)
from srlib.bench.__main__ import main as bench_module_main
from srlib.cli import main

OUTCOMES = {"ok", "refused"}
REPOSITORY = Path(__file__).resolve().parents[1]


RATE_FIELDS = ("multiply_adds", "gflop", "gflops", "matmul_fraction", "time_min_ms", "time_max_ms", "time_spread",
               "noisy")


def _check_record(record, matmul_gflops=None):
    """A record either has a positive time and a non-negative memory, or says why not; its rates are consistent."""
    assert record["status"] in OUTCOMES, record
    assert set(RATE_FIELDS) <= set(record), record
    if record["status"] == "ok":
        assert record["time_ms"] > 0 and all(t > 0 for t in record["times_ms"]), record
        assert record["memory_mib"] is not None and record["memory_mib"] >= 0, record
        assert record["memory_method"], record
        assert record["time_min_ms"] <= record["time_ms"] <= record["time_max_ms"], record
        if record["gflop"] is None:
            assert record["gflops"] is None and record["matmul_fraction"] is None, record
        else:
            assert record["gflop"] == pytest.approx(2 * record["multiply_adds"] / 1e9), record
            assert record["gflops"] == pytest.approx(record["gflop"] / (record["time_ms"] / 1000)), record
            if matmul_gflops is not None:
                assert record["matmul_fraction"] == pytest.approx(record["gflops"] / matmul_gflops), record
    else:
        assert record["reason"], record
        assert record["time_ms"] is None
        assert record["gflops"] is None and record["matmul_fraction"] is None, record


def _spec(case, size=12, **extra):
    """The in-process spec of one tiny measurement (the worker process runs the same code)."""
    return {"case": case, "size": size, "channels": 16, "repeats": 1, "warmup": 0, "device": "cpu", "threads": 1,
            "seed": 0, "region_grid": None, "max_attention_bytes": None, "probe_mib": 0, **extra}


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test go into a copy of the attention registry, dropped afterwards."""
    monkeypatch.setattr(ATTENTION, "_entries", dict(ATTENTION._entries))


# ----------------------------------------------------------------------------------------------
# One quick command-line run
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_cli_run(tmp_path_factory):
    """One `srlib bench attention --quick` run shared by the tests below (each (case, size) is a fresh process).

    memory_probe fills 200 MiB inside its forward pass; a guard limit of 1000 bytes makes
    dense_explicit refuse even the tiny quick maps; nlsa_r2 runs normally.
    """
    out = tmp_path_factory.mktemp("bench")
    cases = ["memory_probe", "dense_explicit", "nlsa_r2"]
    status = main(["bench", "attention", "--quick", *(a for c in cases for a in ("--case", c)),
                   "--max-attention-bytes", "1000", "--threads", "1", "--out", str(out), "--no-progress"])
    result = json.loads((out / "attention_bench.json").read_text())
    return status, out, cases, result


def test_quick_cli_writes_json_and_png(quick_cli_run):
    status, out, _, result = quick_cli_run
    assert status == 0
    assert (out / "attention_bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["benchmark"] == "attention"
    json.dumps(result, allow_nan=False)  # strict JSON, no NaN or Infinity
    env = result["environment"]
    assert env["device"] == "cpu" and env["torch_threads"] == 1 and env["torch_version"] and env["cpu_model"]


def test_json_has_every_requested_case_and_size(quick_cli_run):
    _, _, cases, result = quick_cli_run
    sizes = sorted(set(QUICK_SIZES) | set(QUICK_SWEEP_SIZES))
    measured = {(r["case"], r["size"]): r for r in result["measurements"]}
    assert set(measured) == {(c, s) for c in cases for s in sizes}
    for record in measured.values():
        _check_record(record, result["matmul_gflops"])
        assert record["positions"] == record["size"] ** 2
    rows = result["summary"]["table"]
    assert {(r["case"], r["size"]) for r in rows} == {(c, s) for c in cases for s in QUICK_SIZES}
    # Each case names the registered attention and options it measured.
    assert result["case_details"]["nlsa_r2"] == {"source": "registry", "kind": "in_scale", "attention": "nlsa",
                                                 "options": {"n_rounds": 2}, "module": None}
    assert result["case_details"]["memory_probe"]["source"] == "calibration"
    assert result["cases"]["nlsa_r2"].startswith("nlsa(n_rounds=2): ")


def test_json_has_the_matmul_rate_and_each_case_rate(quick_cli_run):
    _, _, _, result = quick_cli_run
    matmul = result["matmul"]
    assert matmul["status"] == "ok" and matmul["shape"] == [QUICK_MATMUL_SIZE] * 3
    assert matmul["dtype"] == "float32" and matmul["threads"] == 1 and len(matmul["times_ms"]) >= 5
    assert result["matmul_gflops"] == matmul["gflops"] > 0
    assert matmul["gflops"] == pytest.approx(2 * QUICK_MATMUL_SIZE**3 / 1e9 / (matmul["time_ms"] / 1000))
    assert result["settings"]["matmul_size"] == QUICK_MATMUL_SIZE
    assert result["settings"]["noise_threshold"] == NOISE_THRESHOLD
    for record in result["measurements"]:
        if record["case"] == "nlsa_r2":  # its declared arithmetic at the size it ran
            size = record["size"]
            expected = attention_multiply_adds("nlsa", (1, 64, size, size), {"n_rounds": 2})
            assert record["multiply_adds"] == expected and record["gflop"] == pytest.approx(2 * expected / 1e9)
            assert 0 < record["matmul_fraction"]
        if record["case"] == "memory_probe":  # calibration: no arithmetic
            assert record["gflop"] is None and record["matmul_fraction"] is None
        assert record["noisy"] is None and record["time_spread"] is None  # --quick: one pass cannot show noise
    rows = result["summary"]["table"]
    assert all({"gflop", "gflops", "matmul_fraction", "time_spread", "noisy"} <= set(row) for row in rows)
    report = format_attention_report(result)
    assert "matmul rate:" in report and "GFLOP/s" in report and "one timed pass" in report


def test_subprocess_measurement_sees_a_200_mib_allocation(quick_cli_run):
    _, _, _, result = quick_cli_run
    probes = [r for r in result["measurements"] if r["case"] == "memory_probe"]
    assert probes
    for record in probes:
        assert record["status"] == "ok", record
        assert 150 <= record["memory_mib"] <= 300, record
        assert record["memory_method"] == ("proc_clear_refs" if sys.platform.startswith("linux") else "ru_maxrss")


def test_guard_refusal_is_recorded_not_raised(quick_cli_run):
    status, _, _, result = quick_cli_run
    assert status == 0
    refused = [r for r in result["measurements"] if r["case"] == "dense_explicit"]
    assert refused
    for record in refused:
        assert record["status"] == "refused", record
        assert "max_attention_bytes" in record["reason"], record
    # With the reference refused there is nothing to compare against.
    assert all(row["speedup_vs_dense_explicit"] is None for row in result["summary"]["table"])
    report = format_attention_report(result)
    assert "refused" in report and "memory_probe" in report


# ----------------------------------------------------------------------------------------------
# The cases come from the registry
# ----------------------------------------------------------------------------------------------


def test_cases_are_the_registry_benchmark_cases():
    from srlib.attention import attention_entry, benchmark_cases

    registered = benchmark_cases()
    assert set(attention_cases()) == set(registered)
    assert list(attention_cases())[:2] == ["dense_explicit", "dense_fused"]  # the references come first
    for name, description in attention_cases().items():
        attention, _ = registered[name]
        assert description.startswith(f"{attention}(") and attention_entry(attention).description in description
    assert set(CALIBRATION_CASES).isdisjoint(attention_cases())


@pytest.mark.parametrize("case", list(attention_cases()))
def test_every_registered_case_builds_and_runs_in_process(case):
    record = measure_one(_spec(case, repeats=2))
    assert record["status"] == "ok", record
    _check_record(record)
    assert isinstance(record["noisy"], bool) and record["time_spread"] >= 0
    attention = resolve_cases([case])[0].attention
    if attention_entry(attention).multiply_adds is None:  # no declared arithmetic: null GFLOP, not an error
        assert record["gflop"] is None and record["reason"] is None, record
    else:
        assert record["gflop"] > 0, record


def test_a_toy_attention_registered_here_is_a_case(scratch_registry):
    @register_attention("bench_toy", kind="in_scale", bench={"bench_toy_x2": {"gain": 2.0}, "bench_toy_x3": {"gain": 3.0}})
    class BenchToy(nn.Module):
        """Scales a 1x1 convolution of its input: a toy for the benchmark tests."""

        def __init__(self, channels, gain=1.0):
            super().__init__()
            self.value_embed = nn.Conv2d(channels, channels, 1)
            self.gain = gain

        def forward(self, x, return_details=False):
            return self.gain * self.value_embed(x)  # (N, C, H, W)

    cases = attention_cases()
    assert {"bench_toy_x2", "bench_toy_x3"} <= set(cases)
    assert cases["bench_toy_x2"] == "bench_toy(gain=2.0): Scales a 1x1 convolution of its input: a toy for the benchmark tests."
    (chosen,) = resolve_cases(["bench_toy_x3"])
    assert (chosen.attention, chosen.options, chosen.kind) == ("bench_toy", {"gain": 3.0}, "in_scale")
    assert build_attention_case("bench_toy_x3", 4).gain == 3.0
    record = measure_one(_spec("bench_toy_x2"))
    assert record["status"] == "ok", record


def test_a_toy_attention_declaring_its_arithmetic_gets_a_rate(scratch_registry):
    @register_attention("bench_toy_arithmetic", kind="in_scale",
                        multiply_adds=lambda shape, options: shape[0] * shape[1] ** 2 * shape[2] * shape[3])
    class ArithmeticToy(nn.Module):
        """A 1x1 convolution, N C^2 H W multiply-adds."""

        def __init__(self, channels):
            super().__init__()
            self.value_embed = nn.Conv2d(channels, channels, 1)

        def forward(self, x, return_details=False):
            return self.value_embed(x)  # (N, C, H, W)

    record = measure_one(_spec("bench_toy_arithmetic", size=12, repeats=3))
    assert record["status"] == "ok", record
    assert record["multiply_adds"] == 16 * 16 * 12 * 12
    _check_record(record)
    assert record["matmul_fraction"] is None  # measure_one alone knows no matmul rate
    assert add_rates(dict(record), 0.5)["matmul_fraction"] == pytest.approx(record["gflops"] / 0.5)


def test_a_faulty_declaration_keeps_the_measurement(scratch_registry):
    def broken(shape, options):
        raise ZeroDivisionError("oops")

    @register_attention("bench_toy_broken", kind="in_scale", multiply_adds=broken)
    class BrokenToy(nn.Module):
        """Identity with a faulty arithmetic declaration."""

        def __init__(self, channels):
            super().__init__()

        def forward(self, x, return_details=False):
            return x + 0  # (N, C, H, W)

    record = measure_one(_spec("bench_toy_broken"))
    assert record["status"] == "ok" and record["gflop"] is None
    assert "declared arithmetic failed" in record["reason"] and "oops" in record["reason"]


def test_reference_attention_gets_two_references_of_the_size_of_x(scratch_registry):
    seen = []

    @register_attention("bench_reference_toy", kind="reference")
    class ReferenceToy(nn.Module):
        """Adds the mean of its references."""

        def __init__(self, channels):
            super().__init__()
            self.value_embed = nn.Conv2d(channels, channels, 1)

        def forward(self, x, references, return_details=False):
            seen.append([tuple(r.shape) for r in references])
            return self.value_embed(x) + torch.stack(list(references)).mean(0)  # (N, C, H, W)

    record = measure_one(_spec("bench_reference_toy", size=6, repeats=2))
    assert record["status"] == "ok", record
    assert seen and all(shapes == [(1, 16, 6, 6), (1, 16, 6, 6)] for shapes in seen)


def test_unknown_case_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown benchmark case") as info:
        run_attention_benchmark(cases=["dense_explicit", "nlsa_r3", "dense"], quick=True, progress=False)
    message = str(info.value)
    assert "'nlsa_r3'" in message and "'dense'" in message
    for known in (*attention_cases(), *CALIBRATION_CASES):
        assert known in message
    with pytest.raises(ValueError, match="no cases to measure"):
        resolve_cases([])


# ----------------------------------------------------------------------------------------------
# External modules: --module FILE.py:Class
# ----------------------------------------------------------------------------------------------

PLUGIN = '''
"""A module class outside srlib, and an attention this file registers."""
import torch
from torch import nn
from srlib.attention import register_attention


class GatedIdentity(nn.Module):
    """x times a learnt per-channel gate: an external module for the benchmark tests."""

    def __init__(self, channels):
        super().__init__()
        self.gate = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x):
        return x * torch.sigmoid(self.gate)  # (N, C, H, W)


@register_attention("bench_plugin_gate", kind="in_scale", bench={"bench_plugin_case": {"bias": 0.5}})
class RegisteredGate(GatedIdentity):
    """The same gate, registered by the plug-in file."""

    def __init__(self, channels, bias=0.0):
        super().__init__(channels)
        self.bias = bias

    def forward(self, x, return_details=False):
        return super().forward(x) + self.bias
'''


def test_module_file_is_measured_through_the_worker(tmp_path, scratch_registry):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    spec = f"{plugin}:GatedIdentity"
    # The case registered by the file exists once the file is imported, in this process and in the worker.
    result = run_attention_benchmark(cases=["bench_plugin_case"], modules=[spec], quick=True, threads=1,
                                     device="cpu", progress=False)
    assert result["settings"]["cases"] == ["bench_plugin_case", "GatedIdentity"]
    assert result["settings"]["isolation"] == "fresh process per (case, size)"
    assert result["settings"]["modules"] == [str(plugin.resolve()) + ":GatedIdentity"]
    rows = {(r["case"], r["size"]): r for r in result["measurements"]}
    sizes = sorted(set(QUICK_SIZES) | set(QUICK_SWEEP_SIZES))
    assert set(rows) == {(c, s) for c in ("bench_plugin_case", "GatedIdentity") for s in sizes}
    for record in rows.values():
        assert record["status"] == "ok", record
        _check_record(record)
    assert result["case_details"]["GatedIdentity"]["source"] == "module"
    assert "x times a learnt per-channel gate" in result["cases"]["GatedIdentity"]
    assert "GatedIdentity" in format_attention_report(result)


def test_bad_module_specs_are_value_errors(tmp_path):
    plugin = tmp_path / "plain.py"
    plugin.write_text("VALUE = 3\n")
    broken = tmp_path / "broken.py"
    broken.write_text("import does_not_exist_anywhere\n")
    for spec, words in (
        ("no_colon_here", "FILE.py:Class"),
        (f"{tmp_path / 'missing.py'}:Thing", "no such file"),
        (f"{plugin}:Thing", "no attribute 'Thing'"),
        (f"{plugin}:VALUE", "not an nn.Module class"),
        (f"{broken}:Thing", "does_not_exist_anywhere"),
        ("srlib_no_such_package.mod:Thing", "importing srlib_no_such_package.mod failed"),
    ):
        with pytest.raises(ValueError, match=words):
            resolve_cases([], [spec])


def test_cli_module_option_errors_are_one_line(tmp_path, capsys):
    status = main(["bench", "attention", "--quick", "--module", str(tmp_path / "nope.py") + ":Thing",
                   "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error:") and "no such file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Summary, report, plot
# ----------------------------------------------------------------------------------------------


def _synthetic_result(sparse_case="nlsa_r1", case_details=None):
    """dense_fused costs S^4 / 2e6 ms (slope 2 in H*W), the sparse case costs S^2 / 100 ms (slope 1)."""
    sizes = [25, 50, 100, 200]
    records = []
    for case, time_of, memory_of in (
        ("dense_fused", lambda s: s**4 / 2e6, lambda s: s**4 / 1e5),
        (sparse_case, lambda s: s**2 / 100, lambda s: s**2 / 10),
    ):
        for s in sizes:
            records.append({"case": case, "size": s, "positions": s * s, "status": "ok", "time_ms": time_of(s),
                            "times_ms": [time_of(s)], "memory_mib": memory_of(s), "memory_method": "synthetic",
                            "baseline_mib": 0.0, "reason": None})
    result = {
        "benchmark": "attention",
        "settings": {"cases": ["dense_fused", sparse_case], "sizes": [100, 200], "sweep_sizes": sizes, "channels": 64,
                     "repeats": 1, "warmup": 0},
        "environment": {"device": "cpu", "device_name": "test", "torch_threads": 1, "torch_version": "x"},
        "cases": {},
        "measurements": records,
    }
    if case_details is not None:
        result["case_details"] = case_details
    result["summary"] = summarise_attention_benchmark(result)
    return result


@pytest.mark.parametrize(
    "times, spread, noisy",
    [
        ([10.0, 10.5, 13.0], 3.0 / 10.5, True),  # one slow pass: a busy machine
        ([10.0, 11.0, 10.5], 1.0 / 10.5, False),
        ([10.0, 12.0, 10.0], 0.2, False),  # exactly 20%: not above the threshold
        ([10.0, 12.1, 10.0], 0.21, True),
        ([8.0], None, None),  # one pass cannot show noise
    ],
)
def test_spread_flag_on_synthetic_timings(times, spread, noisy):
    stats = timing_statistics(times)
    assert stats["noisy"] is noisy
    assert stats["time_spread"] == (None if spread is None else pytest.approx(spread))
    assert stats["time_min_ms"] == min(times) and stats["time_max_ms"] == max(times)
    with pytest.raises(ValueError, match="at least one"):
        timing_statistics([])


def test_noisy_measurement_is_flagged_in_summary_and_table():
    result = _synthetic_result()
    for record in result["measurements"]:
        times = [record["time_ms"]] * 3
        if (record["case"], record["size"]) == ("nlsa_r1", 100):
            times = [record["time_ms"], record["time_ms"], 1.5 * record["time_ms"]]
        record.update({"times_ms": times, **timing_statistics(times), "multiply_adds": 10**9, "gflop": 2.0})
        add_rates(record, 100.0)
    result["matmul_gflops"] = 100.0
    result["summary"] = summarise_attention_benchmark(result)
    noisy = result["summary"]["noisy"]
    assert [(n["case"], n["size"]) for n in noisy] == [("nlsa_r1", 100)]
    assert noisy[0]["time_spread"] == pytest.approx(0.5)
    row = next(r for r in result["summary"]["table"] if (r["case"], r["size"]) == ("nlsa_r1", 100))
    assert row["noisy"] is True and row["gflops"] == pytest.approx(2.0 / (row["time_ms"] / 1000))
    assert row["matmul_fraction"] == pytest.approx(row["gflops"] / 100.0)
    report = format_attention_report(result)
    line = next(t for t in report.splitlines() if t.startswith("nlsa_r1") and "50%!" in t)
    assert f"{100 * row['matmul_fraction']:.0f}%" in line
    assert "NOISY" in report and "nlsa_r1          S=100: spread 50%" in report
    assert sum("%!" in t for t in report.splitlines()) == 1  # only that row is marked


def test_matmul_rate_in_process():
    record = measure_matmul({"matmul_size": 64, "threads": 1, "repeats": 1, "warmup": 0})
    assert record["status"] == "ok", record
    assert len(record["times_ms"]) >= 5  # at least MATMUL_MIN_REPEATS passes even for one repeat
    assert record["gflop"] == pytest.approx(2 * 64**3 / 1e9)
    assert record["gflops"] == pytest.approx(record["gflop"] / (record["time_ms"] / 1000))
    assert isinstance(record["noisy"], bool)
    failed = measure_matmul({"matmul_size": 8, "dtype": "no_such_dtype"})
    assert failed["status"] == "failed" and failed["gflops"] is None and "no_such_dtype" in failed["reason"]


def test_summary_slopes_ratios_and_crossover():
    summary = _synthetic_result()["summary"]  # no case_details: the registry says nlsa_r1 is attention nlsa
    assert summary["slopes"]["dense_fused"]["time"] == pytest.approx(2.0)
    assert summary["slopes"]["nlsa_r1"]["memory"] == pytest.approx(1.0)
    assert summary["time_ratio_s200_over_s100"]["nlsa_r1"] == pytest.approx(4.0)
    assert summary["time_ratio_s200_over_s100"]["dense_fused"] == pytest.approx(16.0)
    # nlsa_r1 against dense_fused: 6.25 vs 0.20 ms at S=25, 25 vs 3.1 at 50, 100 vs 50 at 100, 400 vs 800 at 200.
    crossover = summary["nlsa_faster_than_dense_fused"]["nlsa_r1"]
    assert crossover["size"] == 200 and crossover["largest_compared"] == 200
    assert list(summary["nlsa_faster_than_dense_fused"]) == ["nlsa_r1"]  # not dense_fused
    # No dense_explicit in the cases: no ratios.
    assert all(row["speedup_vs_dense_explicit"] is None for row in summary["table"])


def test_summary_finds_nlsa_cases_by_attention_not_by_name():
    def details(attention):
        return {"dense_fused": {"source": "registry", "kind": "in_scale", "attention": "non_local",
                                "options": {"implementation": "fused"}, "module": None},
                "my_sparse_r16": {"source": "registry", "kind": "in_scale", "attention": attention,
                                  "options": {"n_rounds": 16}, "module": None}}

    summary = _synthetic_result("my_sparse_r16", details("nlsa"))["summary"]
    assert summary["nlsa_faster_than_dense_fused"]["my_sparse_r16"]["size"] == 200
    assert _synthetic_result("my_sparse_r16", details("region_non_local"))["summary"][
        "nlsa_faster_than_dense_fused"] == {}
    assert _synthetic_result("my_sparse_r16")["summary"]["nlsa_faster_than_dense_fused"] == {}  # unknown to the registry


def test_report_and_plot_of_synthetic_result():
    result = _synthetic_result()
    report = format_attention_report(result)
    assert "time(S=200) / time(S=100)" in report and "from S=200" in report
    fig = plot_attention_benchmark(result)
    time_axis, memory_axis = fig.axes[:2]
    labels = [t.get_text() for t in time_axis.get_legend().get_texts()]
    assert "dense_fused (slope 2.00)" in labels and "nlsa_r1 (slope 1.00)" in labels
    assert time_axis.get_xscale() == "log" and memory_axis.get_yscale() == "log"


def test_saved_result_of_the_docs_still_reports():
    """Notebook 04 loads docs/results/attention_bench.json (written before case_details existed)."""
    saved = REPOSITORY / "docs" / "results" / "attention_bench.json"
    if not saved.exists():
        pytest.skip("no saved benchmark in docs/results")
    result = json.loads(saved.read_text())
    result["summary"] = summarise_attention_benchmark(result)
    report = format_attention_report(result)
    assert "NLSA faster than dense_fused" in report and "nlsa_r8" in report
    if "matmul_gflops" not in result:  # saved before the rates existed: shown as not measured, not an error
        assert "matmul rate: not measured" in report


# ----------------------------------------------------------------------------------------------
# Arguments and the command line
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_args, words",
    [
        (["--case", "dense", "--quick"], "unknown benchmark case"),
        (["--cases", "dense", "--quick"], "unknown benchmark case"),  # the deprecated spelling still works
        (["--sizes", "0", "--quick"], "sizes"),
        (["--repeats", "0", "--quick"], "repeats"),
        (["--warmup", "-1", "--quick"], "warmup"),
        (["--region-grid", "0", "2", "--quick"], "region_grid"),
        (["--max-attention-bytes", "-5", "--quick"], "max_attention_bytes"),
    ],
)
def test_bad_arguments_are_one_error_line(bad_args, words, tmp_path, capsys):
    status = main(["bench", "attention", *bad_args, "--out", str(tmp_path / "out"), "--no-progress"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note:")]
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert not (tmp_path / "out").exists()


def test_out_naming_a_file_is_refused_before_measuring(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert bench_module_main(["attention", "--quick", "--out", str(target)]) == 2  # python -m srlib.bench
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "is a file" in err and len(err.splitlines()) == 1
    assert target.read_text() == "keep me"


def test_no_sizes_at_all_is_refused():
    with pytest.raises(ValueError, match="no sizes"):
        run_attention_benchmark(sizes=[], sweep_sizes=[], progress=False)


def test_guard_off_travels_as_json():
    # --max-attention-bytes inf turns the guard off; the worker's JSON spec carries it as "inf".
    limited = measure_one(json.loads(json.dumps(_spec("dense_explicit", size=8, max_attention_bytes=1000))))
    unlimited = measure_one(json.loads(json.dumps(_spec("dense_explicit", size=8, max_attention_bytes="inf"))))
    assert limited["status"] == "refused", limited
    assert unlimited["status"] == "ok", unlimited
    with pytest.raises(ValueError, match="max_attention_bytes"):
        run_attention_benchmark(max_attention_bytes=-1.0, progress=False)


def test_package_layout_and_no_cli_import():
    for name in ("run_attention_benchmark", "format_attention_report", "plot_attention_benchmark",
                 "save_attention_benchmark", "DEFAULT_SIZES", "DEFAULT_SWEEP_SIZES"):
        assert name in srlib.bench.__all__ and hasattr(srlib.bench, name)
    done = subprocess.run(
        [sys.executable, "-c", "import sys, srlib.bench; assert 'srlib.cli' not in sys.modules, 'imports srlib.cli'"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr


def test_max_seconds_stops_the_timed_passes_after_the_budget_but_runs_at_least_one():
    unlimited = measure_one(_spec("dense_fused", repeats=4))
    assert unlimited["status"] == "ok" and len(unlimited["times_ms"]) == 4
    limited = measure_one(_spec("dense_fused", repeats=4, max_seconds=1e-9))  # the first pass exceeds it
    assert limited["status"] == "ok" and len(limited["times_ms"]) == 1
    assert limited["time_spread"] is None and limited["noisy"] is None  # one pass: spread unknown, not "quiet"
    with pytest.raises(ValueError, match="max_seconds"):
        run_attention_benchmark(cases=["dense_fused"], sizes=[8], sweep_sizes=[], max_seconds=0)
