"""After training: reading runs, baselines, figures, the report, and prediction on images."""
