"""The benchmark in a tiny mode, so the script cannot rot (its numbers are not checked here)."""

import re

from aelab.benchmark import main


def test_benchmark_prints_a_row_per_task_and_path_with_ratios(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the folder cache goes to a throwaway ~/.cache
    tiny = ["--repeats", "1", "--epochs", "2", "--batches", "2", "--workers", "0"]
    table = main(["--root", str(image_folder), *tiny])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "images/s" not in line]
    assert len(rows) == 6
    for task in ("reconstruction", "colorization"):
        (aelab_row,) = [r for r in rows if r.startswith(f"| {task} | (a)")]
        a_over_b, a_over_c = map(float, re.findall(r"\| (\d+\.\d\d) ", aelab_row + " "))
        assert a_over_b > 0 and a_over_c > 0
    assert "torch" in table and "threads" in table
