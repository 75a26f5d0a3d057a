"""Invalid settings are refused by type and range before a run dir exists and before torch loads."""

import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from aelab import CONFIG_DIR
from aelab.config import SCHEMAS, config_problems
from aelab.runtime import cli, created
from tests.conftest import CLEAN_ENVIRONMENT, REPO, compose_config, run_entry

BAD_VALUES = [
    ("seed=-1", "seed"),
    ("seed=1099511627776", "seed"),
    ("seed=abc", "seed"),
    ("seed='7'", "seed"),  # text, though it reads as a number
    ("data.batch_size=abc", "data.batch_size"),
    ("data.eval_batch_size=0", "data.eval_batch_size"),
    ("data.image_size=-32", "data.image_size"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.subset=2", "data.subset"),
    ("data.split=random", "data.split"),
    ("data.source=imagenet", "data.source"),
    ("data.download=maybe", "data.download"),
    ("model.widths=foo", "model.widths"),
    ("model.widths=[8,0,16]", "model.widths"),
    ("model.kernel_size=2.5", "model.kernel_size"),
    ("model.activation=tanh", "model.activation"),
    ("model.upsample_mode=area", "model.upsample_mode"),
    ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("trainer.max_epochs=null", "trainer.max_epochs"),
    ("+trainer.max_steps=0", "trainer.max_steps"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("task.loss=huber", "task.loss"),
    ("threads=0", "threads"),
]


def run_entry_stderr(entry, *args: str, capsys) -> tuple[int, str]:
    """train.py's (or eval.py's) entry in this process: (exit code, stderr)."""
    return run_entry(entry, *args), capsys.readouterr().err


def aelab_paragraph(stderr: str) -> str:
    """The one paragraph aelab printed: stderr is exactly that, between blank lines."""
    text = stderr.strip()
    assert text.startswith("aelab: ") and "\n" not in text, stderr
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize(("override", "key"), BAD_VALUES)
def test_a_bad_value_exits_2_with_one_paragraph_and_no_run_dir(override, key, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, stderr = run_entry_stderr(cli.main, override, f"hydra.run.dir={run_dir}", capsys=capsys)
    assert code == 2
    text = aelab_paragraph(stderr)
    value = override.split("=", 1)[1]  # shown as typed
    assert f"Invalid setting {key}={value}: {key} must be" in text
    assert not run_dir.exists() and not any(tmp_path.iterdir())


def test_max_epochs_minus_one_points_to_max_steps(tmp_path, capsys):
    code, stderr = run_entry_stderr(
        cli.main, "trainer.max_epochs=-1", f"hydra.run.dir={tmp_path / 'run'}", capsys=capsys
    )
    assert code == 2 and "trainer.max_steps=N" in stderr and "until the process is killed" in stderr


def test_every_bad_value_of_a_command_line_is_named_in_one_paragraph(tmp_path, capsys):
    code, stderr = run_entry_stderr(
        cli.main, "seed=abc", "data.batch_size=0", "model.widths=[]",
        f"hydra.run.dir={tmp_path / 'run'}", capsys=capsys,
    )  # fmt: skip
    text = aelab_paragraph(stderr)
    assert code == 2 and text.startswith("aelab: Invalid settings: seed=abc: ")
    assert "; data.batch_size=0: " in text and "; model.widths=[]: " in text


def test_fractions_that_leave_no_training_images_are_refused_early(tmp_path):
    cfg = compose_config(["data.val_fraction=0.5", "data.test_fraction=0.6"], tmp_path)
    (problem,) = config_problems(cfg, SCHEMAS["train"])
    assert "data.val_fraction=0.5 and data.test_fraction=0.6 leave no images" in problem
    official = compose_config(["data.split=official", "data.val_fraction=0.5"], tmp_path)
    assert config_problems(official, SCHEMAS["train"]) == []


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("loss=foo", "Available options in 'loss':\n\tbce\n\tce\n\tmse"),  # an unknown group option
        ("data.batchsize=3", "Key 'batchsize' is not in struct"),  # a key typo
        ("seed=[1", "no viable alternative"),  # not an override at all
    ],
)
def test_hydras_own_errors_exit_2_with_hydras_message(override, shown, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, stderr = run_entry_stderr(cli.main, override, f"hydra.run.dir={run_dir}", capsys=capsys)
    assert code == 2 and shown in stderr
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("arguments", "suggestion"),
    [
        (["loss=bcee"], "did you mean loss=bce?"),  # a group option
        (["hydra/launcher=jobib"], "did you mean hydra/launcher=joblib?"),  # a plugin's option
        (["data.batchsize=3"], "did you mean data.batch_size=3?"),  # a key
        (["trainer.max_epoch=3"], "did you mean trainer.max_epochs?"),  # a Trainer argument
        (["los=mse"], "did you mean loss=mse?"),  # a group's name
        # a key of the task the command line chose, beside a sweep's list of values
        (
            ["-m", "loss=bce,mse", "task=colorization", "task.rebalanse=0.3"],
            "did you mean task.rebalance=0.3?",
        ),
        (["data=folder", "data.source=foldr"], "(did you mean folder?)"),  # an option of a key
    ],
)
def test_a_typo_gets_a_did_you_mean(arguments, suggestion, tmp_path, capsys):
    code, stderr = run_entry_stderr(
        cli.main, *arguments, f"hydra.run.dir={tmp_path}/run", capsys=capsys
    )
    assert code == 2 and suggestion in stderr


@pytest.mark.parametrize("arguments", [["trainer.xyzzy=3"], ["loss=zzz"], ["pooling.mode=max"]])
def test_nothing_close_gets_no_suggestion(arguments, tmp_path, capsys):
    code, stderr = run_entry_stderr(
        cli.main, *arguments, f"hydra.run.dir={tmp_path}/run", capsys=capsys
    )
    assert code == 2 and "did you mean" not in stderr


def test_eval_typos_are_corrected_from_evals_config(tmp_path, capsys):
    code, stderr = run_entry_stderr(cli.eval_main, "ckpt_path=x", "splt=val", capsys=capsys)
    assert code == 2 and "did you mean split=val?" in stderr


def test_a_failure_inside_the_run_keeps_exit_1():
    """Only Hydra's command-line and composition errors become exit 2; a crash stays a crash."""

    def hydra_exit(cause: Exception):
        def entry():
            try:
                raise cause
            except Exception:
                sys.exit(1)  # as Hydra's run_and_report does after printing

        return entry

    with pytest.raises(SystemExit) as crash:
        cli.exit_2_for_command_line_errors(hydra_exit(RuntimeError("boom")), "train")
    with pytest.raises(SystemExit) as user_error:
        cli.exit_2_for_command_line_errors(hydra_exit(ConfigCompositionException("typo")), "train")
    assert (crash.value.code, user_error.value.code) == (1, 2)


def test_eval_refuses_a_bad_value_before_its_dir_exists(tmp_path, capsys):
    eval_dir = tmp_path / "eval"
    code, stderr = run_entry_stderr(
        cli.eval_main, "ckpt_path=x.ckpt", "split=train", "threads=0",
        f"hydra.run.dir={eval_dir}", capsys=capsys,
    )  # fmt: skip
    text = aelab_paragraph(stderr)
    assert code == 2 and "split=train: split must be one of test, val" in text
    assert "threads=0: threads must be an integer ≥ 1" in text
    assert not eval_dir.exists()


@pytest.mark.slow
def test_every_shipped_option_passes(tmp_path):
    groups = [p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"]
    options = [(g, o.stem) for g in groups for o in sorted((CONFIG_DIR / g).glob("*.yaml"))]
    assert len(options) >= 25
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for group, option in options:
            overrides = [f"{group}={option}"]
            if (group, option) == ("loss", "ce"):
                overrides.append("task=colorization")  # colorization's loss only
            if (group, option) == ("data", "folder"):
                overrides.append(f"data.root={tmp_path}")  # a folder source needs its root
            if (group, option) == ("model", "custom"):
                overrides.append("model._target_=tests.plugins.tiny_net.TinyNet")  # yours, named
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
            assert config_problems(cfg, SCHEMAS["train"]) == [], (group, option)


def test_eval_data_settings_left_as_the_runs_or_given_pass():
    """eval.py's data keys are ??? (the run's own) unless given as data.KEY=VALUE."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for overrides in ([], ["data.root=x", "data.image_size=64", "data.subset=null"]):
            cfg = compose("eval", overrides=overrides, return_hydra_config=True)
            assert config_problems(cfg, SCHEMAS["eval"]) == [], overrides
        cfg = compose("eval", overrides=["data.split_seed=abc"], return_hydra_config=True)
    assert any(
        "data.split_seed=abc" in problem for problem in config_problems(cfg, SCHEMAS["eval"])
    )


def test_a_saved_config_as_resume_and_ddp_ranks_load_it_passes(tmp_path):
    """resume=RUN_DIR and DDP children compose RUN_DIR/.hydra/config.yaml, plus ++resume."""
    saved = tmp_path / "run" / ".hydra"
    saved.mkdir(parents=True)
    cfg = compose_config(["debug=smoke", "task=colorization", "scheduler=cosine"], tmp_path)
    with open_dict(cfg):
        cfg.paths.output_dir = "${hydra:runtime.output_dir}"  # as Hydra saves it
    OmegaConf.save(cfg, saved / "config.yaml")
    with initialize_config_dir(config_dir=str(saved), version_base="1.3"):
        resumed = compose("config", overrides=[f"++resume='{saved.parent}'"])
    assert resumed.resume == str(saved.parent)
    assert config_problems(resumed, SCHEMAS["train"]) == []
    with open_dict(resumed):
        resumed.trainer.max_epochs = -1
    assert [p.split(":")[0] for p in config_problems(resumed, SCHEMAS["train"])] == [
        "trainer.max_epochs=-1"
    ]


def test_the_run_refuses_what_reaches_it_and_keeps_a_dir_with_a_run_in_it(tmp_path, capsys):
    """The task function's check (sweep jobs, resumes, DDP ranks): what this process made for
    the start goes (aelab.runtime.created), a run it did not make stays whole."""
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    created.make_dir(fresh)  # as the claim makes it, before Hydra writes
    created.expect(fresh / ".hydra", "tree")
    created.expect(fresh / "train.log")
    for run_dir in (fresh, resumed):
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / "train.log").touch()
    (resumed / "checkpoints").mkdir()
    for run_dir in (fresh, resumed):
        cfg = compose_config(["seed=-5"], run_dir)
        with pytest.raises(SystemExit) as stop:
            cli.refuse_invalid_settings(cfg, "train")
        assert stop.value.code == 2
        assert "seed=-5" in aelab_paragraph(capsys.readouterr().err)
    assert not fresh.exists() and (resumed / "checkpoints").is_dir()


@pytest.mark.slow
def test_a_sweep_job_with_a_bad_value_leaves_no_dir(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "seed=abc,-1", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=CLEAN_ENVIRONMENT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "aelab: Invalid setting seed=abc" in result.stderr and "Traceback" not in result.stderr
    assert not sweep.exists()


def test_a_bad_value_is_refused_before_torch_loads(tmp_path):
    script = (
        "import sys\n"
        "from aelab.runtime.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit as stop:\n"
        "    print(stop.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script, "seed=abc", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=CLEAN_ENVIRONMENT,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert result.stdout.split() == ["2", "False", "False"], result.stderr[-2000:]
    assert "Invalid setting seed=abc: seed must be" in aelab_paragraph(result.stderr)
    assert not run_dir.exists()
    print(f"seed=abc refused in {seconds:.2f} s")


def test_keys_outside_the_schemas_are_left_to_the_run(tmp_path):
    """Arguments the schemas do not name (+trainer extras, callbacks, optimizer arguments) pass
    to the classes' own checks."""
    overrides = ["+trainer.detect_anomaly=true", "callbacks.preview.count=-3", "+optimizer.eps=1"]
    assert config_problems(compose_config(overrides, tmp_path), SCHEMAS["train"]) == []
