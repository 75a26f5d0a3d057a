"""Test a run's checkpoint: `python eval.py ckpt_path=outputs/runs/<run>/checkpoints/best.ckpt`."""

from aelab.runtime.cli import eval_main

if __name__ == "__main__":
    eval_main()
