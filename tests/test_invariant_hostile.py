"""The hostile pass of issue 22: cases no issue listed, each against the invariant it breaks.

Every bad input ends in one aelab paragraph with exit 2 before the work starts, and leaves what
the user had (a file, a run, an earlier output) as it was.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from aelab.analysis import png_stream, predict_cli, report
from aelab.analysis.runs import find_runs
from aelab.data import identity
from aelab.errors import AelabError
from aelab.models.checkpoint import read_checkpoint
from aelab.tasks import ReconstructionTask
from tests.conftest import make_image_folder, run_cli
from tests.test_evaluate import run_eval, snapshot


@pytest.mark.slow
def test_eval_refuses_a_test_limit_that_rounds_to_no_batch(trained, tmp_path):
    run_dir = trained("reconstruction")
    eval_dir = tmp_path / "eval"
    result = run_eval(
        f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
        "+trainer.limit_test_batches=0.001",
        f"hydra.run.dir={eval_dir}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "aelab: trainer.limit_test_batches=0.001 leaves the test loop no batch" in result.stderr
    assert "Traceback" not in result.stderr
    assert not eval_dir.exists()  # refused before the eval dir was made


@pytest.mark.slow
def test_load_from_checkpoint_names_network_settings_that_are_not_a_networks(trained, tmp_path):
    checkpoint = torch.load(
        trained("reconstruction") / "checkpoints" / "best.ckpt", weights_only=True
    )
    for name, model in {"extra_key": {"widths": [8], "depth": 3}, "a_list": [8, 12]}.items():
        checkpoint["hyper_parameters"]["model"] = model
        path = tmp_path / f"{name}.ckpt"
        torch.save(checkpoint, path)
        with pytest.raises(AelabError, match="are not a ConvAutoEncoder's") as refusal:
            ReconstructionTask.load_from_checkpoint(path)
        assert str(refusal.value).startswith(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("in_the_way", ["report.md", "figures"])
def test_report_refuses_an_unwritable_output_before_its_work_starts(
    in_the_way, trained, tmp_path, capsys, monkeypatch
):
    run_dir = shutil.copytree(trained("reconstruction"), tmp_path / "run")
    blocker = run_dir / in_the_way
    blocker.mkdir() if in_the_way == "report.md" else blocker.write_text("mine\n")
    monkeypatch.setattr(report, "group_section", lambda *args: pytest.fail("work started"))
    assert report.main([str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a" in err and err.strip().count("\n") == 0


@pytest.mark.slow
def test_a_failed_write_keeps_the_earlier_output_and_leaves_no_temporary(
    trained, tmp_path, capsys, monkeypatch
):
    checkpoint = trained("reconstruction") / "checkpoints" / "best.ckpt"
    photo = tmp_path / "photo.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(photo)
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "photo.png"
    earlier.write_bytes(b"the user's own file")
    args = [str(photo), "--ckpt", str(checkpoint), "--out-dir", str(out)]
    assert predict_cli.main("reconstruction", args) == 2  # refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err

    def disk_full(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(png_stream.PngStream, "write", disk_full)
    assert predict_cli.main("reconstruction", [*args, "--overwrite"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert earlier.read_bytes() == b"the user's own file"
    assert sorted(path.name for path in out.iterdir()) == ["photo.png"]


@pytest.mark.slow
def test_resume_of_an_eval_dir_is_refused_and_leaves_it_as_it_was(trained, tmp_path):
    eval_dir = tmp_path / "eval"
    checkpoint = trained("reconstruction") / "checkpoints" / "best.ckpt"
    assert run_eval(f"ckpt_path={checkpoint}", f"hydra.run.dir={eval_dir}").returncode == 0
    before = snapshot(eval_dir)
    result = run_cli(f"resume={eval_dir}")
    assert result.returncode == 2
    assert f"aelab: resume={eval_dir}: {eval_dir} is an eval dir" in result.stderr
    assert snapshot(eval_dir) == before  # no train.log, no "failed" metrics.json written into it


@pytest.mark.parametrize(
    "manifest", ["[1, 2]", '{"jobs": [{"job": 0}]}', '{"jobs": "all"}', "{", '{"jobs": [["x=1"]]}']
)
def test_an_edited_sweep_json_is_named_not_a_traceback(manifest, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text(manifest)
    result = run_cli(f"resume={sweep_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"aelab: {sweep_dir} has" in result.stderr and "sweep.json" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_report_shows_a_stopped_sweeps_jobs_not_run(trained, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(trained("reconstruction"), sweep_dir / "0")
    done = OmegaConf.to_container(OmegaConf.load(sweep_dir / "0" / ".hydra" / "overrides.yaml"))
    jobs = [done, [*done, "seed=7"]]
    manifest = {"jobs": [{"job": n, "overrides": o} for n, o in enumerate(jobs)]}
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    text = report.write_report(sweep_dir).read_text()
    assert "2 run(s): 1 completed, 1 not run." in text
    assert "| `.` | 1 | " in text and "seed=7 |" in text
    assert f"Continue with `python train.py resume={sweep_dir}`." in text


@pytest.mark.slow
def test_a_run_dir_inside_its_own_data_root_is_refused_leaving_the_images_as_they_were(tmp_path):
    images = make_image_folder(tmp_path / "images", train_per_class=20, test_per_class=5)
    before = snapshot(images)
    result = run_cli(
        *("debug=smoke", "data=folder", f"data.root={images}", "data.subset=null"),
        *(f"paths.cache_dir={tmp_path / 'cache'}", "trainer.accelerator=cpu"),
        f"hydra.run.dir={images / 'train' / 'cats' / 'run'}",  # its preview.png: a "cats" image
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "lies inside data.root" in result.stderr
    assert snapshot(images) == before


@pytest.mark.slow
@pytest.mark.parametrize("edit", [{"root": 7}, {"id": None}, {"root": ["/data"]}])
def test_a_data_json_edited_to_other_types_is_named_not_a_traceback(edit, trained, tmp_path):
    run_dir = shutil.copytree(trained("reconstruction"), tmp_path / "run")
    saved = json.loads((run_dir / "data.json").read_text())
    (run_dir / "data.json").write_text(json.dumps({**saved, **edit}))
    with pytest.raises(AelabError, match="is not a data identity written by aelab"):
        identity.recorded(run_dir)


@pytest.mark.parametrize("overrides", ["{", "5", "[1, 2]"])
def test_a_jobs_edited_overrides_yaml_is_named_when_the_sweep_continues(overrides, tmp_path):
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "0" / ".hydra").mkdir(parents=True)
    (sweep_dir / "0" / ".hydra" / "overrides.yaml").write_text(overrides)
    manifest = {"jobs": [{"job": 0, "overrides": ["seed=1"]}], "hydra_overrides": []}
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    result = run_cli(f"resume={sweep_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        f"aelab: {sweep_dir / '0' / '.hydra' / 'overrides.yaml'} is not the list" in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_run_dir_given_as_the_checkpoint_is_named_as_a_directory(trained):
    run_dir = trained("reconstruction")
    with pytest.raises(AelabError, match="is a directory, not a checkpoint file"):
        read_checkpoint(run_dir)


def test_a_failed_eval_dir_is_not_reported_as_a_run(tmp_path):
    for name, log in (("run", "train.log"), ("eval", "eval.log")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("seed: 1\n")
        (tmp_path / name / log).write_text("log\n")
    (tmp_path / "eval" / "metrics.json").write_text('{"status": "failed", "error": "E"}\n')
    assert [run.name for run in find_runs(tmp_path)] == ["run"]  # eval.py failed: no eval.json
