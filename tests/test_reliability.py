"""Exact resume after SIGKILL and SIGTERM, whole checkpoints, the divergence stop, run dirs that
are never overwritten, and guarded model configs (property-based)."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aelab.callbacks import RandomStates
from aelab.data.batches import EpochBatches
from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.runtime.checkpoint_io import AtomicCheckpointIO
from aelab.runtime.resume import resume_arguments
from aelab.runtime.run_lock import release_all
from aelab.runtime.train import run
from tests.conftest import CLEAN_ENVIRONMENT, compose_config, run_cli

REPO = Path(__file__).resolve().parents[1]
BATCHES_PER_EPOCH = 20  # 80 train images in batches of 4


@pytest.fixture(scope="module")
def run_args(tmp_path_factory) -> list[str]:
    """Three short epochs, a step checkpoint every 3 steps, shuffling on, one thread."""
    from tests.conftest import make_image_folder

    root = tmp_path_factory.mktemp("reliability")
    images = make_image_folder(root / "images")
    return [
        "debug=smoke", "data=folder", f"data.root={images}", "data.subset=null",
        f"paths.cache_dir={root / 'cache'}", "trainer.accelerator=cpu", "threads=1",
        "data.batch_size=4", "trainer.max_epochs=3", "callbacks.step_checkpoint.every_n_train_steps=3",
    ]  # fmt: skip


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env={**CLEAN_ENVIRONMENT, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*args: str) -> None:
    process = start(*args)
    assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def wait_for(path: Path, process: subprocess.Popen) -> None:
    while not path.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.005)


@pytest.fixture(scope="module")
def reference(run_args, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must match."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    finish(*run_args, f"hydra.run.dir={run_dir}")
    return run_dir


def assert_same_run(resumed: Path, reference: Path) -> None:
    ours = load(resumed / "checkpoints" / "last.ckpt")["state_dict"]
    theirs = load(reference / "checkpoints" / "last.ckpt")["state_dict"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (resumed, reference)]
    assert metrics[0]["status"] == "completed" and metrics[0] == metrics[1]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(
    run_args, reference, tmp_path
):
    run_dir = tmp_path / "run"
    process = start(*run_args, f"hydra.run.dir={run_dir}")
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    position = load(run_dir / "checkpoints" / "last.ckpt")["ImageDataModule"]
    assert position["train_epoch"] == 0 and 0 < position["train_batches_done"] < BATCHES_PER_EPOCH
    hydra_files = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    log_before = (run_dir / "train.log").read_text()

    finish(f"resume={run_dir}")

    assert_same_run(run_dir, reference)
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == hydra_files
    log_after = (run_dir / "train.log").read_text()
    assert log_after.startswith(log_before) and "Resuming from" in log_after[len(log_before) :]
    assert len(list((run_dir / "tensorboard").iterdir())) == 1  # one TensorBoard run, resumed into
    timing = json.loads((run_dir / "timing.json").read_text())
    assert len(timing["seconds_per_epoch"]) == 3


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_resumed_run_matches(run_args, reference, tmp_path):
    run_dir = tmp_path / "run"
    process = start(*run_args, f"hydra.run.dir={run_dir}")
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "interrupted" and f"resume={run_dir}" in status["resume"]
    saved = load(run_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] >= 3 and "RandomStates" in saved["callbacks"]

    finish(f"resume={run_dir}")

    assert_same_run(run_dir, reference)


@pytest.mark.slow
def test_a_requeued_slurm_job_continues_its_run_from_the_last_checkpoint(
    run_args, reference, tmp_path
):
    """SIGUSR1 (sbatch --signal=USR1@…) saves last.ckpt; SLURM starts the same command again with
    SLURM_RESTART_COUNT set, and the run ends exactly where the uninterrupted run ends."""
    run_dir = tmp_path / "run"
    process = start(*run_args, f"hydra.run.dir={run_dir}")
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGUSR1)
    assert process.wait(timeout=60) == 128 + signal.SIGUSR1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"

    again = start(*run_args, f"hydra.run.dir={run_dir}")
    assert again.wait(timeout=60) == 2 and "already holds a run" in again.stderr.read()
    requeued = start(*run_args, f"hydra.run.dir={run_dir}", env={"SLURM_RESTART_COUNT": "1"})
    assert requeued.wait(timeout=300) == 0, requeued.stderr.read()[-3000:]
    assert "Resuming from" in (run_dir / "train.log").read_text()
    assert_same_run(run_dir, reference)


SAVE_FOREVER = """
import sys, torch
from aelab.runtime.checkpoint_io import AtomicCheckpointIO
io, path, index = AtomicCheckpointIO(), sys.argv[1], 0
try:  # the numbering goes on from the last save of the process killed before
    index = int(torch.load(path, weights_only=True)["state_dict"]["w"][0])
except FileNotFoundError:
    pass
print("saving", flush=True)
while True:
    index += 1
    io.save_checkpoint({"state_dict": {"w": torch.full((2_000_000,), float(index))}}, path)
"""


@pytest.mark.slow
def test_a_kill_during_saving_always_leaves_a_loadable_last_checkpoint(tmp_path):
    """Never a half-written last.ckpt; what a killed save left goes at the next save."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    generator, killed = random.Random(0), []
    for _ in range(3):
        process = subprocess.Popen(
            [sys.executable, "-c", SAVE_FOREVER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout.readline() == "saving\n"
        while not path.exists():
            time.sleep(0.01)
        time.sleep(generator.random() * 0.3)
        process.kill()
        process.wait(timeout=60)
        process.stdout.close()
        killed.append(process.pid)
        weights = load(path)["state_dict"]["w"]
        assert weights.shape == (2_000_000,) and bool((weights == weights[0]).all())
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(".")) == [
        "last.ckpt"
    ]
    for pid in killed:  # what a kill at any moment of a save can leave
        path.with_name(f".last.ckpt.tmp{pid}").write_bytes(b"half")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_save_removes_only_the_leftovers_of_processes_that_are_gone(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    try:
        for pid in (live.pid, gone.pid):
            (tmp_path / f".last.ckpt.tmp{pid}").write_bytes(b"half")
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == [f".last.ckpt.tmp{live.pid}", "last.ckpt"]
    finally:
        live.kill()
        live.wait(timeout=60)


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    smoke_overrides, tmp_path, monkeypatch
):
    """The loss turns NaN at the 7th training step; checkpoints come every 2 steps."""
    from aelab.tasks import losses

    bce, calls = losses.LOSSES["bce"], []

    def bce_turning_nan(logits, targets):
        loss = bce(logits, targets)
        if torch.is_grad_enabled():
            calls.append(1)
            return loss * float("nan") if len(calls) >= 7 else loss
        return loss

    monkeypatch.setitem(losses.LOSSES, "bce", bce_turning_nan)
    overrides = ["data.batch_size=8", "callbacks.step_checkpoint.every_n_train_steps=2"]
    cfg = compose_config([*smoke_overrides, *overrides, "logger=none"], tmp_path)
    with pytest.raises(SystemExit) as stop:
        run(cfg)
    assert stop.value.code == 2
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert results["status"] == "diverged"
    assert "step 7 (epoch 0, batch 6 " in results["error"]
    last = load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6
    assert all(value.isfinite().all() for value in last["state_dict"].values())


def test_weights_that_turned_non_finite_never_reach_a_checkpoint(smoke_overrides, tmp_path):
    """lr=inf: the first step's loss is finite but its update is not; a checkpoint is due."""
    overrides = ["optimizer.lr=inf", "callbacks.step_checkpoint.every_n_train_steps=1"]
    cfg = compose_config([*smoke_overrides, *overrides, "logger=none"], tmp_path)
    with pytest.raises(SystemExit):
        run(cfg)
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert results["status"] == "diverged"
    assert "weights became NaN or infinite by step 1 " in results["error"]
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


def fake_run(run_dir: Path) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run_dir / "checkpoints").mkdir()
    return run_dir


def fake_checkpoint(path: Path, step: int) -> bytes:
    """A checkpoint as aelab's resume reads it before Hydra starts; its bytes."""
    torch.save({"aelab": {"model": {}}, "global_step": step, "epoch": step // 10}, path)
    return path.read_bytes()


def failed_run(run_dir: Path) -> Path:
    fake_run(run_dir)
    (run_dir / "metrics.json").write_text('{"status": "failed"}\n')
    return run_dir


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_again(tmp_path):
    """Interrupted in its setup, or killed before it wrote metrics.json: nothing was trained."""
    for name, status in (("interrupted", '{"status": "interrupted"}\n'), ("unstarted", None)):
        run_dir = fake_run(tmp_path / name)
        if status:
            (run_dir / "metrics.json").write_text(status)
        assert resume_arguments([f"resume={run_dir}"])[-1] == f"++resume='{run_dir}'"


def interrupted_run(run_dir: Path) -> Path:
    fake_run(run_dir)
    (run_dir / "metrics.json").write_text('{"status": "interrupted"}\n')
    return run_dir


def test_a_new_run_refuses_a_dir_that_holds_another_run(tmp_path):
    run_dir = fake_run(tmp_path / "old")
    result = run_cli("debug=smoke", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "already holds a run" in result.stderr and "resume=" in result.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "seed: 1\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoints"]


def test_a_sweep_refuses_a_sweep_dir_that_holds_runs(tmp_path):
    fake_run(tmp_path / "sweep" / "0")
    result = run_cli("-m", "debug=smoke", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2 and "another sweep" in result.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["0"]


def test_resume_rewrites_the_command_line_to_the_runs_own_config(tmp_path):
    run_dir = fake_run(tmp_path / "old")
    fake_checkpoint(run_dir / "checkpoints" / "last.ckpt", step=3)
    assert resume_arguments(["loss=mse"]) == ["loss=mse"]
    assert resume_arguments([f"resume={run_dir}"]) == [
        f"--config-path={run_dir / '.hydra'}", "--config-name=config",
        f"hydra.run.dir='{run_dir}'", "hydra.output_subdir=null", "hydra.job.name=train",
        "++trusted_modules=[]",  # the resume command line's, never the saved config's
        f"++resume='{run_dir}'",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda d: d, [], "not a run dir"),
        (lambda d: failed_run(d), [], "stopped \\(failed\\) before its first checkpoint"),
        (fake_run, ["loss=mse"], "takes no other arguments"),
    ],
)
def test_resume_refuses_what_it_cannot_continue(make, extra, message, tmp_path):
    run_dir = make(tmp_path / "old")
    with pytest.raises(AelabError, match=message):
        resume_arguments([f"resume={run_dir}", *extra])


def test_resume_of_a_completed_run_exits_2_with_the_reason(tmp_path):
    run_dir = fake_run(tmp_path / "old")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run_dir / "metrics.json").write_text('{"status": "completed"}')
    result = run_cli(f"resume={run_dir}")
    assert result.returncode == 2 and "has completed" in result.stderr


@pytest.mark.slow
def test_resume_of_a_truncated_last_checkpoint_names_it_and_keeps_the_status(tmp_path):
    run_dir = interrupted_run(tmp_path / "old")
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(fake_checkpoint(last, step=3)[:300])
    result = run_cli(f"resume={run_dir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{last} could not be loaded" in " ".join(result.stderr.split())
    assert "init_weights=" in result.stderr
    assert (run_dir / "metrics.json").read_text() == '{"status": "interrupted"}\n'


def test_resume_at_continues_the_epoch_order_after_the_batches_done():
    sampler = EpochBatches(size=10, batch_size=3, shuffle=True, seed=5)
    sampler.set_epoch(2)
    full = [batch.tolist() for batch in sampler]
    resumed = EpochBatches(size=10, batch_size=3, shuffle=True, seed=5)
    resumed.resume_at(2, 1)
    assert [batch.tolist() for batch in resumed] == full[1:]
    assert [batch.tolist() for batch in resumed] == full  # only the first iteration skips
    resumed.resume_at(1, 4)  # a whole epoch done: the next one, from its start
    assert resumed.epoch == 2 and [batch.tolist() for batch in resumed] == full


def lists_of_ints(states: dict) -> dict:
    """The form checkpoints saved before the words were stored as tensors."""
    name, keys, *numpy_rest = states["numpy"]
    version, internal, gauss = states["python"]
    python = (version, tuple(internal.tolist()), gauss)
    return {**states, "numpy": [name, keys.tolist(), *numpy_rest], "python": python}


@pytest.mark.parametrize("form", [lambda states: states, lists_of_ints])
def test_random_states_round_trip_through_a_weights_only_checkpoint(form, tmp_path):
    callback = RandomStates()
    torch.save(form(callback.state_dict()), tmp_path / "states.pt")
    drawn = (torch.rand(3), np.random.rand(3), random.random())
    callback.load_state_dict(load(tmp_path / "states.pt"))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(drawn[0], again[0]) and np.array_equal(drawn[1], again[1])
    assert drawn[2] == again[2]


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    kernel_size=st.sampled_from([1, 3, 5]),
    pooling=st.sampled_from(["max", "avg", "none"]),
    size_factor=st.integers(1, 3),
    channels=st.sampled_from([(3, 3), (1, 2)]),
)
def test_any_valid_model_config_maps_an_image_back_to_its_shape(
    widths, kernel_size, pooling, size_factor, channels
):
    model = ConvAutoEncoder(*channels, widths=widths, kernel_size=kernel_size, pooling=pooling)
    size = size_factor * 2**model.pooling_stages
    x = torch.rand(1, channels[0], size, size)
    assert model(x).shape == (1, channels[1], size, size)
    assert tuple(model.encode(x).shape[1:]) == model.latent_shape(size, size)


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(-3, 6), max_size=4),
    kernel_size=st.integers(-3, 8),
)
def test_any_invalid_model_config_is_refused_with_the_setting_named(widths, kernel_size):
    valid_widths = bool(widths) and all(w > 0 for w in widths)
    valid_kernel = kernel_size > 0 and kernel_size % 2 == 1
    assume(not (valid_widths and valid_kernel))
    expected = "model.widths" if not valid_widths else "model.kernel_size"
    with pytest.raises(AelabError, match=expected):
        ConvAutoEncoder(widths=widths, kernel_size=kernel_size)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
    release_all()  # the run dirs an in-process resume_arguments claimed
