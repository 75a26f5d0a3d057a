"""bf16 on a CPU that only emulates it is called out before training, not discovered an hour in."""

from __future__ import annotations

import logging

import lightning as L
import pytest

from aelab.runtime.precision import cpu_flags, warn_if_bf16_is_emulated

EMULATING = "fpu sse2 avx2 avx512f"


@pytest.mark.parametrize(
    ("precision", "flags", "warned"),
    [
        ("bf16-mixed", EMULATING, True),
        ("bf16-true", EMULATING, True),
        ("bf16-mixed", EMULATING + " avx512_bf16", False),
        ("bf16-mixed", EMULATING + " amx_bf16", False),
        ("32-true", EMULATING, False),
        ("bf16-mixed", None, False),  # flags unknown (not Linux): nothing to say
    ],
)
def test_bf16_without_bf16_instructions_is_warned_about(precision, flags, warned, tmp_path, caplog):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + (f"flags\t\t: {flags}\n" if flags else ""))
    trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False)
    with caplog.at_level(logging.WARNING):
        assert warn_if_bf16_is_emulated(trainer, cpuinfo) is warned
    said = [r.getMessage() for r in caplog.records if "bf16 instructions" in r.getMessage()]
    assert len(said) == warned
    if said:
        assert "trainer.precision=32-true" in said[0] and precision in said[0]


def test_cpu_flags_reads_the_flags_line_and_none_without_one(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\nbugs\t\t: spectre\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    cpuinfo.write_text("processor\t: 0\n")
    assert cpu_flags(cpuinfo) is None
    assert cpu_flags(tmp_path / "absent") is None


@pytest.mark.slow
def test_train_and_eval_warn_before_bf16_on_a_cpu_that_emulates_it(
    smoke_overrides, trained, tmp_path, monkeypatch, caplog
):
    from aelab.runtime import precision
    from aelab.runtime.evaluate import evaluate
    from aelab.runtime.train import train
    from tests.conftest import compose_config
    from tests.test_evaluate import eval_config

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"flags\t\t: {EMULATING}\n")
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    run_dir = tmp_path / "run"
    cfg = compose_config([*smoke_overrides, "logger=none", "trainer.precision=bf16-mixed"], run_dir)
    checkpoint = trained("reconstruction") / "checkpoints" / "best.ckpt"
    scored = eval_config(
        [f"ckpt_path={checkpoint}", "trainer.precision=bf16-mixed"], tmp_path / "e"
    )
    with caplog.at_level(logging.WARNING):
        train(cfg, run_dir)
        evaluate(scored, tmp_path / "e")
    said = [r.getMessage() for r in caplog.records if "without bf16 instructions" in r.getMessage()]
    assert len(said) == 2  # the run's start, then eval.py's before it scores
