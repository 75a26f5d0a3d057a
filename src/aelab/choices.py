"""The words each choice-valued setting takes, and the defaults code and config share, in one
torch-free place: the config schema checks them before torch loads, the code builds from them."""

POOLINGS = ("max", "avg", "stride", "none")  # stride: a learned 2×2 conv of stride 2
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
UPSAMPLE_MODES = (*INTERPOLATIONS, "transposed", "pixelshuffle")  # the last two are learned
NORMS = ("none", "batch", "group")
ACTIVATIONS = ("relu", "gelu", "silu", "leaky_relu")
REGRESSION_LOSSES = ("bce", "mse")  # per-value losses on targets in [0, 1]
CLASSIFICATION_LOSSES = ("ce",)  # over quantized ab (aelab.tasks.ab_bins): colorization only
SOURCES = ("cifar10", "folder")
SPLITS = ("pooled", "official")
EVAL_SPLITS = ("test", "val")  # eval.py's split=: what it scores
DEFAULT_TEMPERATURE = 0.38  # loss=ce's annealed mean (Zhang et al.)
# optimized_metric: what a run returns to a sweeper (its last value), and the direction Optuna
# searches in for it; every task logs these three.
OPTIMIZED_METRICS = {"val/psnr": "maximize", "val/ssim": "maximize", "val/loss": "minimize"}
