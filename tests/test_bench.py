"""The attention benchmark: cases come from the registry (and --module files), every case is recorded,
the memory measurement sees a known allocation, refusals are recorded instead of raised, the command
writes its files."""

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
from srlib.attention.registry import ATTENTION
from srlib.bench import (
    CALIBRATION_CASES,
    QUICK_SIZES,
    QUICK_SWEEP_SIZES,
    attention_cases,
    build_attention_case,
    format_attention_report,
    measure_one,
    plot_attention_benchmark,
    resolve_cases,
    run_attention_benchmark,
    summarise_attention_benchmark,
)
from srlib.bench.__main__ import main as bench_module_main
from srlib.cli import main

OUTCOMES = {"ok", "refused"}
REPOSITORY = Path(__file__).resolve().parents[1]


def _check_record(record):
    """A record either has a positive time and a non-negative memory, or says why not."""
    assert record["status"] in OUTCOMES, record
    if record["status"] == "ok":
        assert record["time_ms"] > 0 and all(t > 0 for t in record["times_ms"]), record
        assert record["memory_mib"] is not None and record["memory_mib"] >= 0, record
        assert record["memory_method"], record
    else:
        assert record["reason"], record
        assert record["time_ms"] is None


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
        _check_record(record)
        assert record["positions"] == record["size"] ** 2
    rows = result["summary"]["table"]
    assert {(r["case"], r["size"]) for r in rows} == {(c, s) for c in cases for s in QUICK_SIZES}
    # Each case names the registered attention and options it measured.
    assert result["case_details"]["nlsa_r2"] == {"source": "registry", "kind": "in_scale", "attention": "nlsa",
                                                 "options": {"n_rounds": 2}, "module": None}
    assert result["case_details"]["memory_probe"]["source"] == "calibration"
    assert result["cases"]["nlsa_r2"].startswith("nlsa(n_rounds=2): ")


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
    record = measure_one(_spec(case))
    assert record["status"] == "ok", record
    _check_record(record)


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
