"""The attention benchmark: every case is recorded, the memory measurement sees a known allocation,
refusals and missing modules are recorded instead of raised, the command writes its files."""

from __future__ import annotations

import json
import math
import sys

import pytest

from srlib import bench
from srlib.bench import (
    ATTENTION_CASES,
    CaseUnavailableError,
    build_attention_case,
    format_attention_report,
    plot_attention_benchmark,
    run_attention_benchmark,
)
from srlib.cli import main

OUTCOMES = {"ok", "refused", "unavailable"}


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


@pytest.fixture(scope="module")
def quick_cli_run(tmp_path_factory):
    """One `srlib bench attention --quick` run shared by the tests below (each (case, size) is a fresh process).

    memory_probe fills 200 MiB inside its forward pass; a guard limit of 1000 bytes makes
    dense_explicit refuse even the tiny quick maps; nlsa_r2 runs normally.
    """
    out = tmp_path_factory.mktemp("bench")
    cases = ["memory_probe", "dense_explicit", "nlsa_r2"]
    status = main(["bench", "attention", "--quick", "--cases", *cases, "--max-attention-bytes", "1000",
                   "--threads", "1", "--out", str(out), "--no-progress"])
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
    sizes = sorted(set(bench.QUICK_SIZES) | set(bench.QUICK_SWEEP_SIZES))
    measured = {(r["case"], r["size"]): r for r in result["measurements"]}
    assert set(measured) == {(c, s) for c in cases for s in sizes}
    for record in measured.values():
        _check_record(record)
        assert record["positions"] == record["size"] ** 2
    rows = result["summary"]["table"]
    assert {(r["case"], r["size"]) for r in rows} == {(c, s) for c in cases for s in bench.QUICK_SIZES}


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
        assert "explicit non-local attention" in record["reason"] and "max_attention_bytes" in record["reason"]
    # With the reference refused there is nothing to compare against.
    assert all(row["speedup_vs_dense_explicit"] is None for row in result["summary"]["table"])
    report = format_attention_report(result)
    assert "refused" in report and "memory_probe" in report


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_every_case_builds_and_runs_in_process(case):
    # The measuring function itself (the worker process runs the same code), on a 12 x 12 map.
    spec = {"case": case, "size": 12, "channels": 16, "repeats": 1, "warmup": 0, "device": "cpu", "threads": 1,
            "seed": 0, "region_grid": [2, 2], "max_attention_bytes": None, "probe_mib": 0}
    record = bench._measure_here(spec)
    if record["status"] == "unavailable":  # NLSA without srlib.attention.sparse
        assert case.startswith("nlsa") and "srlib.attention.sparse" in record["reason"]
    else:
        assert record["status"] == "ok", record
    _check_record(record)


def test_missing_sparse_module_is_reported_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "srlib.attention.sparse", None)  # makes the import fail
    with pytest.raises(CaseUnavailableError, match="srlib.attention.sparse"):
        build_attention_case("nlsa_r4")
    result = run_attention_benchmark(cases=["nlsa_r1", "nlsa_r4"], sizes=[8], sweep_sizes=[16], threads=1,
                                     device="cpu", progress=False)
    assert [(r["case"], r["size"]) for r in result["measurements"]] == [
        ("nlsa_r1", 8), ("nlsa_r1", 16), ("nlsa_r4", 8), ("nlsa_r4", 16)
    ]
    for record in result["measurements"]:
        assert record["status"] == "unavailable" and "NonLocalSparseAttention" in record["reason"]


def _synthetic_result():
    """dense_fused costs S^4 / 2e6 ms (slope 2 in H*W), nlsa_r1 costs S^2 / 100 ms (slope 1)."""
    sizes = [25, 50, 100, 200]
    records = []
    for case, time_of, memory_of in (
        ("dense_fused", lambda s: s**4 / 2e6, lambda s: s**4 / 1e5),
        ("nlsa_r1", lambda s: s**2 / 100, lambda s: s**2 / 10),
    ):
        for s in sizes:
            records.append({"case": case, "size": s, "positions": s * s, "status": "ok", "time_ms": time_of(s),
                            "times_ms": [time_of(s)], "memory_mib": memory_of(s), "memory_method": "synthetic",
                            "baseline_mib": 0.0, "reason": None})
    result = {
        "benchmark": "attention",
        "settings": {"cases": ["dense_fused", "nlsa_r1"], "sizes": [100, 200], "sweep_sizes": sizes, "channels": 64,
                     "repeats": 1, "warmup": 0},
        "environment": {"device": "cpu", "device_name": "test", "torch_threads": 1, "torch_version": "x"},
        "cases": {},
        "measurements": records,
    }
    result["summary"] = bench._summarise(result)
    return result


def test_summary_slopes_ratios_and_crossover():
    summary = _synthetic_result()["summary"]
    assert summary["slopes"]["dense_fused"]["time"] == pytest.approx(2.0)
    assert summary["slopes"]["nlsa_r1"]["memory"] == pytest.approx(1.0)
    assert summary["time_ratio_s200_over_s100"]["nlsa_r1"] == pytest.approx(4.0)
    assert summary["time_ratio_s200_over_s100"]["dense_fused"] == pytest.approx(16.0)
    # nlsa_r1 against dense_fused: 6.25 vs 0.20 ms at S=25, 25 vs 3.1 at 50, 100 vs 50 at 100, 400 vs 800 at 200.
    crossover = summary["nlsa_faster_than_dense_fused"]["nlsa_r1"]
    assert crossover["size"] == 200 and crossover["largest_compared"] == 200
    # No dense_explicit in the cases: no ratios.
    assert all(row["speedup_vs_dense_explicit"] is None for row in summary["table"])


def test_report_and_plot_of_synthetic_result():
    result = _synthetic_result()
    report = format_attention_report(result)
    assert "time(S=200) / time(S=100)" in report and "from S=200" in report
    fig = plot_attention_benchmark(result)
    time_axis, memory_axis = fig.axes[:2]
    labels = [t.get_text() for t in time_axis.get_legend().get_texts()]
    assert "dense_fused (slope 2.00)" in labels and "nlsa_r1 (slope 1.00)" in labels
    assert time_axis.get_xscale() == "log" and memory_axis.get_yscale() == "log"


@pytest.mark.parametrize(
    "bad_args, words",
    [
        (["--cases", "dense", "--quick"], "unknown benchmark case"),
        (["--sizes", "0", "--quick"], "sizes"),
        (["--repeats", "0", "--quick"], "repeats"),
        (["--warmup", "-1", "--quick"], "warmup"),
        (["--region-grid", "0", "2", "--quick"], "region_grid"),
        (["--max-attention-bytes", "-5", "--quick"], "max_attention_bytes"),
    ],
)
def test_bad_arguments_are_one_error_line(bad_args, words, tmp_path, capsys):
    status = main(["bench", "attention", *bad_args, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and words in err, err
    assert not (tmp_path / "out").exists()


def test_out_naming_a_file_is_refused_before_measuring(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    assert bench._module_main(["attention", "--quick", "--out", str(target)]) == 2  # python -m srlib.bench
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "is a file" in err and len(err.splitlines()) == 1
    assert target.read_text() == "keep me"


def test_no_sizes_at_all_is_refused():
    with pytest.raises(ValueError, match="no sizes"):
        run_attention_benchmark(sizes=[], sweep_sizes=[], progress=False)


def test_guard_off_travels_as_json():
    # --max-attention-bytes inf turns the guard off; the worker's JSON spec carries it as "inf".
    spec = {"case": "dense_explicit", "size": 8, "channels": 8, "repeats": 1, "warmup": 0, "device": "cpu",
            "threads": 1, "seed": 0, "region_grid": [2, 2], "max_attention_bytes": "inf", "probe_mib": 0}
    record = bench._measure_here(json.loads(json.dumps(spec)))
    assert record["status"] == "ok", record
    with pytest.raises(ValueError, match="max_attention_bytes"):
        run_attention_benchmark(max_attention_bytes=-1.0, progress=False)
    assert math.isinf(float(spec["max_attention_bytes"]))
