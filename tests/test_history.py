"""RUN/history.jsonl: one row per epoch whatever the loggers, continued by a resume without a
duplicate epoch; the report's curves come from it."""

import json

from aelab.analysis.runs import read_curves
from aelab.history import EpochHistory, read_history


def test_an_epoch_logged_again_replaces_its_row_and_a_new_logger_goes_on_from_the_file(tmp_path):
    history = EpochHistory(tmp_path)
    history.log_metrics({"val/psnr": 10.0, "epoch": 0}, step=4)
    history.log_metrics({"train/loss": 0.7, "epoch": 0}, step=4)
    history.log_metrics({"val/psnr": 11.0, "epoch": 1}, step=9)
    history.log_metrics({"lr-Adam": 0.1}, step=9)  # per step, no epoch: not the history's
    history.log_metrics({"test/psnr": 12.0, "epoch": 2}, step=10)  # metrics.json's
    resumed = EpochHistory(tmp_path)  # a resume: the file is read back
    resumed.log_metrics({"val/psnr": 11.5, "epoch": 1}, step=9)  # epoch 1 done again
    resumed.log_metrics({"val/psnr": 12.5, "epoch": 2}, step=14)
    rows = read_history(tmp_path / "history.jsonl")
    assert rows == [
        {"epoch": 0, "step": 4, "train/loss": 0.7, "val/psnr": 10.0},
        {"epoch": 1, "step": 9, "val/psnr": 11.5},
        {"epoch": 2, "step": 14, "val/psnr": 12.5},
    ]
    assert read_curves(tmp_path) == {
        "train/loss": [(0, 0.7)],
        "val/psnr": [(0, 10.0), (1, 11.5), (2, 12.5)],
    }


def test_a_cut_last_line_ends_the_rows_read(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps({"epoch": 0, "val/loss": 1.0}) + '\n{"epoch": 1, "val/lo')
    assert read_history(path) == [{"epoch": 0, "val/loss": 1.0}]
    assert read_curves(tmp_path / "nowhere") == {}
