"""aelab deletes only what it created: a user's dir and files survive every refused or failed start
of train.py, train.py -m, eval.py and resume=, byte for byte (aelab.runtime.created)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aelab.runtime import cli, created, run_lock
from aelab.runtime.run_lock import release_all
from tests.conftest import CLEAN_ENVIRONMENT, REPO, run_cli, run_entry
from tests.test_run_lock import STAND_IN, hold


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root, hidden ones too: a file's bytes, a dir as "dir"."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def users_dir(path: Path, *extra: str) -> Path:
    """A dir of the user's own, as a server's logs or a results folder is."""
    (path / "sub").mkdir(parents=True)
    (path / "server.log").write_text("x\n")
    (path / "sub" / "notes.md").write_text("n\n")
    for name in extra:
        (path / name).parent.mkdir(exist_ok=True)
        (path / name).write_text("the user's own\n")
    return path


def data(folder: Path, cache: Path) -> list[str]:
    return ["debug=smoke", "data=folder", f"data.root={folder}", "data.subset=null",
            f"paths.cache_dir={cache}", "trainer.accelerator=cpu"]  # fmt: skip


# Every entry point through a refusal, into DIR (a user's dir): (entry, arguments, its message).
REFUSED_STARTS = {
    "train: a bad value, before the claim": (cli.main, ["seed=abc", "hydra.run.dir=DIR"], "seed"),
    "train: missing data, after the claim": (
        cli.main,
        ["debug=smoke", "data=folder", "data.root=/nonexistent", "hydra.run.dir=DIR"],
        "does not exist",
    ),
    "train: a mistyped ckpt_path": (
        cli.main, ["DATA", "ckpt_path=typo.ckpt", "hydra.run.dir=DIR"], "typo.ckpt",
    ),
    "train: a mistyped init_weights, after the build": (
        cli.main, ["DATA", "init_weights=typo.ckpt", "hydra.run.dir=DIR"], "typo.ckpt",
    ),
    "train: a user's train.log in the dir": (
        cli.main, ["seed=1", "hydra.run.dir=DIR"], "already holds a run's files (train.log)",
    ),
    "train: a user's csv/metrics.csv in the dir": (
        cli.main, ["seed=1", "hydra.run.dir=DIR"], "already holds a run's files (csv)",
    ),
    "train -m: another sweep's multirun.yaml in the dir": (
        cli.main, ["-m", "seed=1,2", "hydra.sweep.dir=DIR"], "another sweep's files (multirun.yaml)",
    ),
    "train -m: a job's bad value": (
        cli.main, ["-m", "DATA", "hydra.sweep.dir=DIR", "data.batch_size=0,64"], "batch_size",
    ),
    "train -m: a job's missing data": (
        cli.main,
        ["-m", "debug=smoke", "data=folder", "data.root=/none", "hydra.sweep.dir=DIR", "seed=1,2"],
        "does not exist",
    ),
    "eval: a mistyped ckpt_path": (cli.eval_main, ["ckpt_path=typo", "hydra.run.dir=DIR"], "typo"),
    "eval: a bad split": (cli.eval_main, ["ckpt_path=x", "split=train", "hydra.run.dir=DIR"], "split"),
    "resume: a dir that holds no run": (cli.main, ["resume=DIR"], "is not a run dir"),
    "train: a dir another process holds": (cli.main, ["seed=1", "hydra.run.dir=DIR"], "in use by"),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED_STARTS)
def test_every_refused_start_leaves_a_users_dir_byte_for_byte(case, image_folder, tmp_path, capsys):
    entry, arguments, message = REFUSED_STARTS[case]
    own = [name for name in ("train.log", "csv/metrics.csv", "multirun.yaml") if name in case]
    directory = users_dir(tmp_path / "users", *own)
    holder = hold(directory) if "holds" in case else None
    before = tree(directory)
    expanded = []
    for argument in arguments:
        if argument == "DATA":
            expanded += data(image_folder, tmp_path / "cache")
        else:
            expanded.append(argument.replace("DIR", str(directory)))
    try:
        code = run_entry(entry, *expanded)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(timeout=60)
            holder.stdout.close()
    assert code == 2
    assert message in capsys.readouterr().err
    assert tree(directory) == before


def test_train_with_missing_data_into_a_users_logs_dir_keeps_it(tmp_path):
    logs = users_dir(tmp_path / "logs")
    before = tree(logs)
    result = run_cli("debug=smoke", "data=folder", "data.root=missing", "hydra.run.dir=logs",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert tree(logs) == before


def test_a_refused_start_takes_away_the_empty_parents_it_made_and_only_those(tmp_path):
    folder = users_dir(tmp_path / "images")
    before = tree(tmp_path)
    result = run_cli("debug=smoke", "data=folder", "data.root=missing",
                     "hydra.run.dir=images/new_class/deeper/run", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert tree(tmp_path) == before and folder.is_dir()


@pytest.mark.slow
def test_eval_of_a_mistyped_checkpoint_into_a_users_logs_dir_keeps_it(tmp_path):
    logs = users_dir(tmp_path / "logs")
    before = tree(logs)
    result = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), "ckpt_path=typo", "hydra.run.dir=logs"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env=CLEAN_ENVIRONMENT,
    )  # fmt: skip
    assert result.returncode == 2 and "typo does not exist" in result.stderr
    assert tree(logs) == before


def test_a_sweep_with_a_bad_job_into_a_users_results_dir_keeps_it(image_folder, tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    (res / "notes.md").write_text("n\n")
    result = run_cli("-m", *data(image_folder, tmp_path / "cache"), "hydra.sweep.dir=res",
                     "data.batch_size=0,64", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "data.batch_size=0" in result.stderr
    assert tree(res) == {"notes.md": b"n\n"}


@pytest.mark.slow
def test_a_sweeps_ended_job_is_kept_when_a_later_job_is_refused(tmp_path):
    """The sweep dir, its multirun.yaml and job 0 stay; job 1, refused, leaves nothing."""
    res = tmp_path / "res"
    res.mkdir()
    (res / "notes.md").write_text("n\n")
    result = subprocess.run(
        [sys.executable, "-c", STAND_IN, str(REPO), "-m", "seed=1,abc", "hydra.sweep.dir=res"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=CLEAN_ENVIRONMENT,
    )  # fmt: skip
    assert result.returncode == 2 and "Invalid setting seed=abc" in result.stderr
    assert (res / "notes.md").read_text() == "n\n" and (res / "multirun.yaml").is_file()
    assert (res / "0" / "ran-seed=1").is_file() and (res / "0" / ".hydra").is_dir()
    assert not (res / "1").exists()


@pytest.mark.parametrize(
    ("entry", "option", "arguments"),
    [
        (cli.main, "hydra.run.dir", []),
        (cli.main, "hydra.sweep.dir", ["-m", "seed=1,2"]),
        (cli.eval_main, "hydra.run.dir", ["ckpt_path=x.ckpt"]),
    ],
)
@pytest.mark.parametrize("inside", [False, True])
def test_an_output_dir_that_is_a_file_exits_2_with_one_paragraph(
    entry, option, arguments, inside, tmp_path, capsys
):
    (tmp_path / "a-file").write_text("mine\n")
    target = tmp_path / "a-file" / "run" if inside else tmp_path / "a-file"
    code = run_entry(entry, *arguments, f"{option}={target}")
    said = capsys.readouterr().err.strip()
    assert code == 2 and said.startswith("aelab: ") and "\n" not in said, said
    assert f"{target} cannot be used as an output dir: " in said
    assert "not an existing file, nor inside one" in said
    assert (tmp_path / "a-file").read_text() == "mine\n"


def test_an_output_dir_this_user_cannot_write_exits_2_with_one_paragraph(
    tmp_path, monkeypatch, capsys
):
    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(run_lock, "create_or_open", refused)  # as in a chmod 555 dir
    code = run_entry(cli.main, "seed=1", f"hydra.run.dir={tmp_path / 'run'}")
    said = capsys.readouterr().err.strip()
    assert code == 2 and said.startswith("aelab: ") and "\n" not in said, said
    assert f"{tmp_path / 'run'} cannot be used as an output dir: Permission denied" in said
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 dir")
def test_a_read_only_outputs_dir_exits_2_with_one_paragraph(tmp_path):
    (tmp_path / "outputs").mkdir(mode=0o555)
    result = run_cli("seed=1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot be used as an output dir: Permission denied" in result.stderr


def test_discard_removes_only_what_this_process_recorded(tmp_path):
    made, existing = tmp_path / "made", users_dir(tmp_path / "existing")
    created.make_dir(made)
    created.make_dir(existing)  # there before: not this process's
    for directory in (made, existing):
        created.expect(directory / ".hydra", "tree")
        (directory / ".hydra").mkdir()
        (directory / ".hydra" / "config.yaml").write_text("seed: 1\n")
        created.expect(directory / "train.log")
        (directory / "train.log").write_text("log\n")
    before = tree(existing)
    created.expect(existing / "server.log")  # there already: never recorded
    created.discard(made, existing)
    assert not made.exists()
    assert tree(existing) == {
        k: v for k, v in before.items() if "hydra" not in k and "train" not in k
    }


def test_a_dir_this_process_made_stays_while_it_holds_what_another_put_there(tmp_path):
    created.make_dir(tmp_path / "run")
    (tmp_path / "run" / "dropped-in.txt").write_text("someone else's\n")
    created.discard(tmp_path / "run")
    assert (tmp_path / "run" / "dropped-in.txt").read_text() == "someone else's\n"


def test_a_kept_result_is_never_discarded(tmp_path):
    sweep, job = tmp_path / "sweep", tmp_path / "sweep" / "0"
    created.make_dir(sweep)
    created.expect(sweep / "multirun.yaml")
    (sweep / "multirun.yaml").write_text("{}\n")
    created.expect_entries(sweep)
    job.mkdir()  # as Hydra makes a job's dir
    created.keep(job)
    created.discard(job, sweep)
    assert job.is_dir() and (sweep / "multirun.yaml").is_file()


def test_a_forked_child_does_not_discard_its_parents_record(tmp_path):
    created.make_dir(tmp_path / "run")
    child = os.fork()
    if child == 0:
        created.discard(tmp_path / "run")
        os._exit(0)
    os.waitpid(child, 0)
    assert (tmp_path / "run").is_dir()


@pytest.fixture(autouse=True)
def _release_claims():
    yield
    release_all()
