"""The benchmark in a tiny mode, so the script cannot rot (its numbers are not checked here)."""

import re

import pytest

from scripts.benchmark import format_table, format_within_run, main, paired_ratios


@pytest.mark.slow
def test_benchmark_prints_a_row_per_task_and_path_with_ratios(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the folder cache goes to a throwaway ~/.cache
    tiny = ["--repeats", "1", "--epochs", "2", "--batches", "2", "--workers", "0"]
    table = main(["--root", str(image_folder), *tiny])
    paths = ("| (a) aelab |", "| (b) bare loop |", "| (c) usual recipe |")
    rows = [line for line in table.splitlines() if any(path in line for path in paths)]
    assert len(rows) == 6
    for task in ("reconstruction", "colorization"):
        (aelab_row,) = [r for r in rows if r.startswith(f"| {task} | (a)")]
        a_over_b, a_over_c = map(float, re.findall(r"\| (\d+\.\d\d) ", aelab_row + " "))
        assert a_over_b > 0 and a_over_c > 0
    assert "torch" in table and "threads" in table
    within = [line for line in table.splitlines() if line.endswith(") |") and "ms |" in line]
    assert [line.split(" | ")[0] for line in within] == ["| reconstruction", "| colorization"]


@pytest.mark.slow
def test_within_only_measures_one_table_with_the_given_overrides(
    image_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path))
    tiny = ["--repeats", "1", "--epochs", "2", "--batches", "2", "--task", "reconstruction"]
    override = "callbacks.step_checkpoint.every_n_train_steps=1"
    table = main(["--root", str(image_folder), *tiny, "--within-only", override])
    assert f"overrides: {override}" in table and "| (a) aelab |" not in table
    (row,) = [line for line in table.splitlines() if line.startswith("| reconstruction |")]
    aelab_ms, bare_ms = (float(row.split(" | ")[column]) for column in (2, 4))
    assert aelab_ms > 0 and bare_ms > 0


def test_a_mistyped_override_is_refused_before_measuring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["callbacks.step_checkpoint.every_n_train_step=1"])
    assert exit_info.value.code == 2 and "every_n_train_step" in capsys.readouterr().err


def test_ratios_pair_each_repeat_so_a_slow_spell_divides_out():
    # The machine ran at full speed in repeat 1 and at half speed in repeat 2, for all paths.
    results = {
        ("reconstruction", "aelab"): [[950.0, 970.0], [480.0]],
        ("reconstruction", "floor"): [[1000.0, 1000.0], [500.0]],
        ("reconstruction", "recipe"): [[400.0], [200.0]],
    }
    assert paired_ratios(results, "reconstruction", "floor") == pytest.approx([0.96, 0.96])
    assert paired_ratios(results, "reconstruction", "recipe") == pytest.approx([2.4, 2.4])
    table = format_table(results, {"device": "cpu"})
    assert (
        "| reconstruction | (a) aelab | 950 | 480–970 | 0.96 (0.96–0.96) | 2.40 (2.40–2.40) |"
        in table
    )


def test_within_run_table_gives_milliseconds_per_step_and_the_pooled_ratio():
    within = {
        "colorization": [
            {
                "block": 10,
                "aelab": [0.22, 0.22],
                "bare": [0.21, 0.21],
                "batch_size": 128,
                "parameters": 5091,
            },
            {"block": 10, "aelab": [0.25], "bare": [0.25], "batch_size": 128, "parameters": 5091},
        ]
    }
    table = format_within_run(within)
    # 3 blocks of 10 steps: aelab 0.69 s, bare 0.67 s → 23.00 and 22.33 ms/step, a/b 0.67/0.69;
    # 128 images in 23 ms: 5,565 images/s.
    assert (
        "| colorization | 5,091 | 23.00 | 5,565 | 22.33 | 0.67 ms | 0.971 (0.955–1.000) |" in table
    )


@pytest.mark.slow
def test_lightning_alone_adds_a_row_per_task_measured_in_a_plain_trainer(
    image_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path))
    tiny = ["--repeats", "1", "--epochs", "2", "--batches", "2", "--task", "colorization"]
    table = main(["--root", str(image_folder), *tiny, "--within-only", "--lightning-alone"])
    rows = [line for line in table.splitlines() if line.startswith("| colorization")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| colorization",
        "| colorization, Lightning alone",
    ]
    for row in rows:
        step_ms, bare_ms = (float(row.split(" | ")[column]) for column in (2, 4))
        assert step_ms > 0 and bare_ms > 0


@pytest.mark.slow
def test_a_row_per_model_preset_with_its_parameters(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    tiny = ["--repeats", "1", "--epochs", "2", "--batches", "2", "--task", "reconstruction"]
    table = main(
        [
            "--root",
            str(image_folder),
            *tiny,
            "--within-only",
            "--model",
            "seed",
            "--model",
            "resnet",
        ]
    )
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| reconstruction")]
    assert [row[0] for row in rows] == [
        "| reconstruction model=seed",
        "| reconstruction model=resnet",
    ]
    seed, resnet = (int(row[1].replace(",", "")) for row in rows)
    assert seed == 4_911 and resnet > 10 * seed  # the seed network's count, and a bigger preset
    assert all(float(row[3].replace(",", "")) > 0 for row in rows)  # images/s
