"""A run dir belongs to one live process: simultaneous starts, resumes of live runs, dead holders."""

import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aelab.errors import AelabError
from aelab.runtime import run_lock
from aelab.runtime.resume import resume_arguments
from aelab.runtime.run_lock import LOCK_NAME, claim, release_all
from tests.conftest import CLEAN_ENVIRONMENT, run_cli

REPO = Path(__file__).resolve().parents[1]

# train.py's own entry (aelab.runtime.cli.main, Hydra, its callbacks) with the training replaced
# by a stand-in that records which start got to run and who held the dir's lock meanwhile.
STAND_IN_TRAINING = """
import json, os, sys, time, types
from pathlib import Path

def run(cfg):
    output_dir = Path(cfg.paths.output_dir)
    lock = json.loads((output_dir / ".aelab.lock").read_text())
    ran = {"pid": os.getpid(), "lock_pid": lock["pid"]}
    (output_dir / f"ran-seed={cfg.seed}").write_text(json.dumps(ran))
    time.sleep(0.3)  # a run that lasts: a second start that slipped through would overlap it

sys.modules["aelab.runtime.train"] = types.ModuleType("aelab.runtime.train")
sys.modules["aelab.runtime.train"].run = run
from aelab.runtime.cli import main
"""
STAND_IN = (
    STAND_IN_TRAINING
    + """
sys.argv = [str(Path(sys.argv[1]) / "train.py"), *sys.argv[2:]]
main()
"""
)
# Each trial forks two processes from one that has imported the entry already, so that they reach
# the claim together and a trial costs Hydra's config composition, not Python's start-up.
RACE = (
    STAND_IN_TRAINING
    + """
repo, root, trials = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
codes = []
for trial in range(trials):
    children = []
    for seed in (1, 2):
        pid = os.fork()
        if pid == 0:
            with open(root / f"trial{trial}-seed{seed}.err", "w") as err:
                os.dup2(err.fileno(), 2)
            sys.argv = [str(repo / "train.py"), f"seed={seed}", f"hydra.run.dir={root / str(trial)}"]
            main()
            sys.exit(0)
        children.append(pid)
    codes.append(sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in children))
print(json.dumps(codes))
"""
)


def start_stand_in(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", STAND_IN, str(REPO), *args],
        cwd=cwd,
        env=CLEAN_ENVIRONMENT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_of_two_starts_in_one_dir_exactly_one_runs_in_20_trials(tmp_path):
    trials = 20
    race = [sys.executable, "-c", RACE, str(REPO), str(tmp_path), str(trials)]
    result = subprocess.run(race, cwd=tmp_path, env=CLEAN_ENVIRONMENT, capture_output=True)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = []
    for trial, codes in enumerate(json.loads(result.stdout.splitlines()[-1])):
        run_dir = tmp_path / str(trial)
        ran = {p.name: json.loads(p.read_text()) for p in run_dir.glob("ran-*")}
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        errors = [(tmp_path / f"trial{trial}-seed{s}.err").read_text() for s in (1, 2)]
        outcomes.append((codes, ran, overrides, errors))
    one_ran = [
        o
        for o in outcomes
        if o[0] == [0, 2]
        and len(o[1]) == 1
        and all(
            k.removeprefix("ran-") in o[2] and v["pid"] == v["lock_pid"] for k, v in o[1].items()
        )
    ]
    raced = [o for o in outcomes if any("is in use by" in e for e in o[3])]
    print(f"exactly one run in {len(one_ran)} of {trials} trials, {len(raced)} met at the lock")
    assert len(one_ran) == trials, [o[:3] for o in outcomes if o not in one_ran]
    # The others came after the winner had written .hydra/; at least one pair must have raced.
    assert raced and all(
        any("is in use by" in e or "already holds a run" in e for e in o[3]) for o in outcomes
    )


HOLD = """
import sys, time
from pathlib import Path
from aelab.runtime.run_lock import claim
claim(Path(sys.argv[1]), sys.argv[2])
print("held", flush=True)
time.sleep(120)
"""


def hold(run_dir: Path, purpose: str = "run") -> subprocess.Popen:
    """A process that claims run_dir through aelab.runtime.run_lock and sleeps."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), purpose], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "held\n"
    return process


def interrupted_run(run_dir: Path) -> Path:
    """A run dir as a stopped run leaves it, with a checkpoint resume can read."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run_dir / "checkpoints").mkdir()
    torch.save({"aelab": {"model": {}}, "global_step": 3}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "metrics.json").write_text('{"status": "interrupted"}\n')
    return run_dir


def holder(run_dir: Path) -> dict:
    text = (run_dir / LOCK_NAME).read_text()
    return json.loads(text) if text else {}


def lock_is_free(run_dir: Path) -> bool:
    """Whether another process could take run_dir's lock now."""
    with open(run_dir / LOCK_NAME) as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def test_resume_of_a_run_whose_process_lives_is_refused_and_of_a_dead_one_goes_on(tmp_path):
    run_dir = interrupted_run(tmp_path / "run")
    live = hold(run_dir)
    try:
        result = run_cli(f"resume={run_dir}")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        said = " ".join(result.stderr.split())
        assert f"is in use by process {live.pid} on host {socket.gethostname()}" in said
        assert "Wait for that process to finish, or stop it" in said
        assert (run_dir / "metrics.json").read_text() == '{"status": "interrupted"}\n'
        assert holder(run_dir)["pid"] == live.pid
    finally:
        live.kill()
        live.wait(timeout=60)
        live.stdout.close()
    assert holder(run_dir)["pid"] == live.pid  # SIGKILL: the file still names it, but the
    assert lock_is_free(run_dir)  # kernel released its lock with the process

    assert resume_arguments([f"resume={run_dir}"])[-1] == f"++resume='{run_dir}'"
    assert holder(run_dir)["pid"] == os.getpid() and holder(run_dir)["purpose"] == "resume"
    again = run_cli(f"resume={run_dir}")  # the resumed process now holds it
    assert again.returncode == 2 and f"in use by process {os.getpid()}" in again.stderr
    release_all()
    assert lock_is_free(run_dir)


def test_a_file_system_without_flock_warns_and_goes_on_unclaimed(tmp_path, monkeypatch, capsys):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    claim(tmp_path / "run", "run")
    assert holder(tmp_path / "run")["pid"] == os.getpid()
    said = " ".join(capsys.readouterr().err.split())
    assert "has no flock, so aelab cannot refuse a second process in this dir" in said


def test_another_flock_error_is_an_unusable_dir_not_a_missing_flock(tmp_path, monkeypatch):
    def broken(fd, operation):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(run_lock.fcntl, "flock", broken)
    with pytest.raises(AelabError, match="cannot be used as an output dir: Input/output error"):
        claim(tmp_path / "run", "run")


@pytest.mark.slow
def test_two_sweeps_in_one_dir_run_one_and_each_job_holds_its_dir(tmp_path):
    sweep = tmp_path / "sweep"
    starts = [
        start_stand_in("-m", f"seed={seeds}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
        for seeds in ("1,2", "3,4")
    ]
    codes = [process.wait(timeout=120) for process in starts]
    assert sorted(codes) == [0, 2], [process.stderr.read() for process in starts]
    winner = starts[codes.index(0)]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        (ran,) = (sweep / job).glob("ran-*")
        assert json.loads(ran.read_text()) == {"pid": winner.pid, "lock_pid": winner.pid}
        assert lock_is_free(sweep / job)  # released at the job's end


@pytest.fixture(autouse=True)
def _release_claims():
    yield
    release_all()
