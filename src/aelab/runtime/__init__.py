"""The process around a run: entry points, resume, requeue, DDP hand-over, run-dir claims."""
