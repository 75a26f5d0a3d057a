"""Scale-out: rank shards of the epoch order, DDP on two CPU processes (alone and inside a
multirun), a submitit_local sweep, and a requeued SLURM job that continues its run."""

import itertools
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aelab.data import ImageDataModule
from aelab.data.batches import EpochBatches
from aelab.errors import AelabError
from aelab.runtime.distributed import child_arguments, launch_rank
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("size", "batch_size", "ranks"),
    list(itertools.product([1, 7, 33, 64, 65], [1, 4], [1, 2, 3])),
)
@pytest.mark.parametrize("training", [True, False])
def test_rank_shards_are_disjoint_cover_the_order_and_train_in_step(
    size, batch_size, ranks, training
):
    samplers = [
        EpochBatches(size, batch_size, training, seed=1, rank=r, ranks=ranks, same_steps=training)
        for r in range(ranks)
    ]
    shards = [sampler.batches() for sampler in samplers]
    assert [len(s) for s in samplers] == [len(batches) for batches in shards]
    seen = [int(i) for batches in shards for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) and all(len(b) for bs in shards for b in bs)
    left_out = size - len(seen)
    if training:
        assert len({len(batches) for batches in shards}) == 1  # same number of steps everywhere
        assert left_out == (
            size % (batch_size * ranks) if size % (batch_size * ranks) < ranks else 0
        )
    else:
        assert left_out == 0
    # Step k of all ranks together is batch k of a one-process run with ranks × the batch size.
    if training and left_out == 0:
        single = EpochBatches(size, batch_size * ranks, True, seed=1).batches()
        for step, batch in enumerate(single):
            assert torch.equal(torch.cat([shard[step] for shard in shards]), batch)


def test_a_resumed_rank_continues_its_own_shard():
    full = EpochBatches(40, 4, True, seed=2, rank=1, ranks=2)
    resumed = EpochBatches(40, 4, True, seed=2, rank=1, ranks=2)
    resumed.resume_at(epoch=0, batches_done=2)
    assert [b.tolist() for b in resumed] == [b.tolist() for b in full.batches()[2:]]


def test_ranks_and_command_lines_come_from_the_launchers_environment(monkeypatch, tmp_path):
    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AELAB_DDP_RUN_DIR", raising=False)
    argv = ["-m", "loss=bce,mse", "trainer=ddp"]
    assert launch_rank() == 0 and child_arguments(argv) == argv

    # A child Lightning started for a job: the job's saved config and dir, whatever argv says.
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("AELAB_DDP_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("AELAB_DDP_RESUME", "")
    child = child_arguments([*argv, f"hydra.run.dir={tmp_path}/elsewhere"])
    assert f"--config-path={tmp_path / '.hydra'}" in child and "-m" not in child
    assert f"hydra.run.dir='{tmp_path}'" in child and "hydra.output_subdir=null" in child
    assert launch_rank() == 1

    # srun's second task: its own command line, but none of rank zero's files.
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("AELAB_DDP_RUN_DIR")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    task = child_arguments(["loss=mse", "hydra.job.name=train"])
    assert task == ["loss=mse", "hydra.output_subdir=null", "hydra.job.name=train_rank1"]
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task per job: SLURM_PROCID says nothing
    assert launch_rank() == 0


@pytest.fixture
def ddp_args(smoke_overrides) -> list[str]:
    return [*smoke_overrides, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_and_writes_once(
    smoke_overrides, ddp_args, tmp_path
):
    """2 ranks × 32 images step on the same 64 images as one process with batches of 64: the
    gradients are the same means, so the whole run is (to float rounding) the same run."""
    one, two = tmp_path / "one", tmp_path / "two"
    cwd = tmp_path / "cwd"  # where a stray run dir would appear
    single = run_cli(*smoke_overrides, "data.batch_size=64", f"hydra.run.dir={one}", cwd=cwd)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli(*ddp_args, "data.batch_size=32", f"hydra.run.dir={two}", cwd=cwd)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one, two)]
    assert metrics[1]["status"] == "completed" and metrics[1]["data"] == metrics[0]["data"]
    assert metrics[1]["test"].keys() == metrics[0]["test"].keys()
    for name, value in metrics[0]["test"].items():
        assert metrics[1]["test"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (one, two)]
    for key, tensor in weights[0]["state_dict"].items():
        torch.testing.assert_close(weights[1]["state_dict"][key], tensor, rtol=1e-4, atol=1e-5)
    assert weights[1]["global_step"] == weights[0]["global_step"]

    # Written once: the same files as the one-process run, plus rank 1's own log.
    files = [sorted(p.relative_to(d).as_posix() for p in d.rglob("*")) for d in (one, two)]
    files = [
        [re.sub(r"^tensorboard/[^/]+", "tensorboard/RUN", f) for f in names] for names in files
    ]
    events = [[f for f in names if "tfevents" in f] for names in files]  # named by time and pid
    assert len(events[1]) == len(events[0])
    assert set(files[1]) - set(events[1]) == set(files[0]) - set(events[0]) | {"train_rank1.log"}
    assert list(cwd.iterdir()) == []
    assert "GLOBAL_RANK: 1" in (two / "train_rank1.log").read_text()


@pytest.mark.slow
def test_ddp_inside_a_two_job_multirun_makes_no_nested_sweeps(ddp_args, tmp_path):
    sweep, cwd = tmp_path / "sweep", tmp_path / "cwd"
    result = run_cli("-m", *ddp_args, "loss=bce,mse", f"hydra.sweep.dir={sweep}", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, loss in zip(jobs, ("bce", "mse"), strict=True):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["loss"] == loss
        assert (sweep / job / "train_rank1.log").is_file()
        assert not [p for p in (sweep / job).iterdir() if p.is_dir() and p.name.isdigit()]
    assert list(cwd.iterdir()) == []  # no outputs/ of a child


@pytest.mark.slow
def test_a_submitit_local_sweep_runs_both_jobs_to_their_own_outputs(smoke_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    sweep_args = [*smoke_overrides, *launcher, "pooling=max,avg", f"hydra.sweep.dir={sweep}"]
    result = run_cli("-m", *sweep_args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, pooling in (("0", "max"), ("1", "avg")):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["model"]["pooling"] == pooling
        assert (sweep / job / "checkpoints" / "best.ckpt").is_file()
    assert (sweep / ".submitit").is_dir()


@pytest.mark.slow
def test_ddp_is_refused_where_lightning_cannot_start_the_other_ranks(ddp_args, tmp_path):
    sweep = tmp_path / "sweep"
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    result = run_cli("-m", *ddp_args, *launcher, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    log = "".join(p.read_text() for p in sweep.rglob("*_log.err"))
    assert "not `python train.py`" in log and "tasks_per_node" in log
    assert result.returncode != 0


def test_a_checkpoint_resumes_only_on_as_many_ranks_as_saved_it():
    """The saved place in the epoch is a position in a per-rank shard."""
    datamodule = ImageDataModule(source="folder", root="unused")
    datamodule.trainer = SimpleNamespace(world_size=1)
    position = {"train_epoch": 0, "train_batches_done": 3}
    with pytest.raises(AelabError, match="saved by a run on 2 DDP"):
        datamodule.load_state_dict({**position, "ranks": 2})
    datamodule.load_state_dict({**position, "ranks": 1})
    assert datamodule._resume_position == (0, 3)
