"""Training on several processes (torchrun, DDP on gloo) and time-based checkpoints.

The torchrun tests start ``python -m torch.distributed.run --nproc_per_node=2 -m srlib train``
on 127.0.0.1, as a user would, and compare with a single process in this one. Tolerance: the
two processes sum the gradients of their halves of the batch and all-reduce them in float32,
so the sums run in another order than in one process (about 1e-7 relative per gradient); after
ten Adam steps the weights agree to about 1e-7, and the tests allow ``atol=1e-5, rtol=1e-4``
(much less than one step's change, ``learning_rate=1e-3``).
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import srlib.train as train_module
from srlib.checkpoint import load_checkpoint
from srlib.distributed import process_layout, rank_batch_size, rank_device
from srlib.train import TrainingError, _ShardSampler, preset_config, train

ROOT = Path(__file__).resolve().parent.parent
STEPS = 12  # the schedule of every run here; the smoke preset checkpoints and validates at step 10


def _config(**overrides):
    return preset_config("smoke", **{"steps": STEPS, "device": "cpu", **overrides})


def _torchrun(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """``srlib train --preset smoke --steps 12 --device cpu --no-progress ARGS`` on two gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "--max-restarts=0",
               "-m", "srlib", "train", "--preset", "smoke", "--steps", str(STEPS), "--device", "cpu",
               "--no-progress", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _two_processes(*args: str, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """``srlib train --preset smoke ... ARGS`` as ranks 0 and 1 started by hand, with no torchrun agent.

    Without the agent nothing ends a process that waits for a failed one: each must stop by itself.
    """
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "srlib", "train", "--preset", "smoke", "--steps", str(STEPS), "--device", "cpu",
               "--no-progress", *args]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
                                       "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
                                       "LOCAL_RANK": str(rank)})
                 for rank in range(2)]
    done = []
    for rank, process in enumerate(processes):
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail(f"rank {rank} did not stop within {timeout} s")
        done.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return done


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """One process, the whole batch: its checkpoints at steps 10 and 11 (``{step: payload}``)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("single")
    saved = {}
    for step in (10, 11):
        train(_config(), out, resume=step > 10, progress=False, write_report=False, stop_after=step)
        saved[step] = load_checkpoint(out / "checkpoint.pt")
    return saved


def test_two_processes_train_what_one_does_and_one_process_resumes_them(tmp_path, single_process):
    out = tmp_path / "ddp"
    done = _torchrun("--out", str(out), "--stop-after", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    # Rank 0 alone writes and reports.
    assert done.stdout.count("saved ") == 1 and "after 10 steps on 2 processes" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    ddp, one = load_checkpoint(out / "checkpoint.pt"), single_process[10]
    assert ddp["step"] == 10 and ddp["config"] == one["config"] == _config().to_dict()
    _assert_same_weights(ddp["model_state"], one["model_state"])
    # The logged loss is the global batch's; rank 0 validated at step 10.
    assert ddp["history"]["step"] == one["history"]["step"] == [10]
    torch.testing.assert_close(torch.tensor(ddp["history"]["loss"]), torch.tensor(one["history"]["loss"]),
                               rtol=1e-5, atol=0)
    assert ddp["history"]["val_step"] == [10]
    assert ddp["history"]["val_psnr"] == pytest.approx(one["history"]["val_psnr"], abs=1e-3)

    # The DDP checkpoint continues in one process as the single-process run does.
    result = train(_config(), out, resume=True, progress=False, write_report=False, stop_after=11)
    assert (result["step"], result["rank"], result["world_size"]) == (11, 0, 1)
    _assert_same_weights(load_checkpoint(out / "checkpoint.pt")["model_state"], single_process[11]["model_state"])


def test_two_processes_resume_a_single_process_checkpoint(tmp_path, single_process):
    out = tmp_path / "run"
    train(_config(), out, progress=False, write_report=False, stop_after=7)  # mid-epoch, between checkpoints
    done = _torchrun("--out", str(out), "--resume", "--stop-after", "11")
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = load_checkpoint(out / "checkpoint.pt")
    assert resumed["step"] == 11 and resumed["history"]["val_step"] == [10]
    _assert_same_weights(resumed["model_state"], single_process[11]["model_state"])
    # Optimiser state too: the two processes restored and kept rank 0's Adam moments.
    for index, state in single_process[11]["optimizer_state"]["state"].items():
        torch.testing.assert_close(resumed["optimizer_state"]["state"][index]["exp_avg_sq"], state["exp_avg_sq"],
                                   rtol=1e-3, atol=1e-9)


FAILING_PLUGIN = textwrap.dedent('''
    import os

    from torch import nn
    from srlib.models import check_lr_batch, register_model


    class FailingNet(nn.Module):
        """Fails in its third training forward pass on rank 1 only."""

        def __init__(self, scale):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
            self.calls = 0

        def forward(self, lr):
            check_lr_batch(lr)
            self.calls += self.training
            if self.training and self.calls == 3 and os.environ.get("RANK") == "1":
                raise RuntimeError("planted failure")
            return self.body(lr)


    @register_model("failing_net", presets={"smoke": {"final_sets": ["Set5"]}})
    def build_failing_net(scale):
        return FailingNet(scale)
''')


def test_an_error_on_one_process_is_reported_and_stops_the_others(tmp_path):
    plugin = tmp_path / "failing_net.py"
    plugin.write_text(FAILING_PLUGIN)
    rank0, rank1 = _two_processes("--out", str(tmp_path / "run"), "--model", "failing_net", "--plugin", str(plugin))
    # The failing process names itself and its error; the other one, waiting for it, stops and names it.
    assert rank1.returncode == 2, rank1.stderr
    assert "error: rank 1 of 2 failed in step 3: RuntimeError: planted failure" in rank1.stderr
    assert rank0.returncode == 2, rank0.stderr
    assert "error: rank 0 of 2 stopped: rank 1 failed in step 3" in rank0.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_checkpoint_written_by_the_clock_resumes_into_the_uninterrupted_run(tmp_path, monkeypatch):
    # The first step-based checkpoint would come at step 10; the run is killed at step 8.
    # Clock checkpoints come at logging steps (every 2 here), so the loss curve continues exactly.
    config = _config(checkpoint_minutes=1.0, log_every=2)
    full = train(config, tmp_path / "full", progress=False, write_report=False)

    saved_steps = []
    original_save = train_module._save

    def recording_save(run):
        saved_steps.append(run.step)
        original_save(run)

    # Each reading of the clock advances it by 40 s: a checkpoint is due every second step.
    clock = itertools.count(0.0, 40.0)
    monkeypatch.setattr(train_module, "_wall_clock", lambda: next(clock))
    monkeypatch.setattr(train_module, "_save", recording_save)
    calls = {"n": 0}
    original_step = torch.optim.Adam.step

    def killed_at_step_8(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("killed")  # no checkpoint on the way out, as with SIGKILL
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", killed_at_step_8)
    with pytest.raises(RuntimeError, match="killed"):
        train(config, tmp_path / "split", progress=False, write_report=False)
    step = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"]
    assert saved_steps and step == saved_steps[-1] and 0 < step < 8 and step % config.checkpoint_every
    assert all(s % config.log_every == 0 for s in saved_steps)
    assert len(saved_steps) >= 2  # the clock restarts after each save

    monkeypatch.setattr(torch.optim.Adam, "step", original_step)
    monkeypatch.setattr(train_module, "_wall_clock", __import__("time").monotonic)
    resumed = train(config, tmp_path / "split", resume=True, progress=False, write_report=False)
    assert resumed["history"]["step"] == full["history"]["step"]
    torch.testing.assert_close(torch.tensor(resumed["history"]["loss"]), torch.tensor(full["history"]["loss"]),
                               rtol=1e-5, atol=1e-7)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model_state"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model_state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_no_clock_checkpoints_when_disabled(tmp_path, monkeypatch):
    clock = itertools.count(0.0, 1e6)  # every step would be due
    monkeypatch.setattr(train_module, "_wall_clock", lambda: next(clock))
    saved = []
    original_save = train_module._save
    monkeypatch.setattr(train_module, "_save", lambda run: (saved.append(run.step), original_save(run)))
    train(_config(steps=4, checkpoint_minutes=0), tmp_path, progress=False, write_report=False)
    assert saved == [4]  # only the final one
    with pytest.raises(TrainingError, match="checkpoint_minutes"):
        train(_config(checkpoint_minutes=-1.0), tmp_path / "bad", progress=False)


def test_processes_read_their_slices_of_the_single_process_batches():
    single = list(_ShardSampler(3, 6, 4))
    assert single == list(range(12, 24)) and len(_ShardSampler(3, 6, 4)) == 12
    shards = [list(_ShardSampler(3, 6, 4, rank, 2)) for rank in range(2)]
    assert [len(s) for s in shards] == [6, 6]
    # Batch by batch, rank 0's two patches then rank 1's two are the single process's four.
    rebuilt = [i for g in range(3) for rank in range(2) for i in shards[rank][2 * g:2 * g + 2]]
    assert rebuilt == single
    assert rank_batch_size(16, 4) == 4
    fits = r"batch_size 6 .* 4 processes; use --batch-size 4 or 8, or run \[1, 2, 3, 6\] processes"
    with pytest.raises(ValueError, match=fits):
        rank_batch_size(6, 4)


def test_the_torchrun_environment_is_read_and_checked(tmp_path, monkeypatch):
    assert process_layout({}) is None and process_layout({"WORLD_SIZE": "1"}) is None
    assert process_layout({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 1, 4)
    with pytest.raises(ValueError, match="RANK is not set"):
        process_layout({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="inconsistent"):
        process_layout({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    assert rank_device("cpu", 1) == torch.device("cpu")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        rank_device("cuda:1", 0)
    with pytest.raises(ValueError, match="CUDA .* or on the CPU"):
        rank_device("mps", 0)
    # A global batch the processes cannot share is refused before any process group starts.
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(TrainingError, match="batch_size 3 .* 2 processes"):
        train(_config(batch_size=3), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_cli_stops_after_a_step_and_sets_the_checkpoint_clock(tmp_path, capsys):
    from srlib.cli import main

    assert main(["train", "--preset", "smoke", "--steps", "4", "--stop-after", "2", "--checkpoint-minutes", "0.5",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path)]) == 0
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["step"] == 2 and payload["config"]["checkpoint_minutes"] == 0.5
    assert not (tmp_path / "metrics.json").exists()  # stopped early: no report yet
    assert "after 2 steps (" in capsys.readouterr().out
    assert main(["train", "--preset", "smoke", "--stop-after", "0", "--out", str(tmp_path / "x")]) == 2
