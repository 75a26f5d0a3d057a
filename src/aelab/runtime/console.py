"""What a run prints: each line once, and no warning the user cannot act on.

quiet_library_noise runs when aelab is imported, so every entry point (train.py, eval.py, the
scripts, a notebook) has it before torch or Lightning load; it removes single, named messages by
category and module, never a whole category. lightning_logs_through_root runs at the start of
every job (aelab.runtime.lifecycle), once Hydra has set up logging and Lightning is imported.
"""

from __future__ import annotations

import logging
import re
import warnings

# (category, message, module): warnings about code that is not the user's, or about what aelab
# does on purpose. A category matches its subclasses (Lightning's PossibleUserWarning is one).
UNACTIONABLE_WARNINGS = (
    # Lightning's own use of a torch API that torch has deprecated.
    (
        FutureWarning,
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        r"lightning\.pytorch\.utilities\._pytree",
    ),
    # The mid-epoch position is kept by ImageDataModule.state_dict, which Lightning does not see.
    (
        UserWarning,
        "You're resuming from a checkpoint that ended before the epoch",
        r"lightning\.pytorch\.loops\.training_epoch_loop",
    ),
    # Under trainer.overfit_batches ImageDataModule itself serves the batches in order.
    (
        UserWarning,
        "You requested to overfit but enabled",
        r"lightning\.pytorch\.trainer\.connectors\.data_connector",
    ),
    # Only resume= finds checkpoints there: a new run never gets a used dir (run_dir_guard).
    (
        UserWarning,
        "Checkpoint directory .* exists and is not empty",
        r"lightning\.pytorch\.callbacks\.model_checkpoint",
    ),
)
# Lightning logs its advertisements (litlogger, litmodels) through this logger.
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
ADVERTISEMENT = "💡 Tip:"
# Lightning's MLflow logger: "Experiment with name task1 not found. Creating it." at a WARNING.
MLFLOW_LOGGER = "lightning.pytorch.loggers.mlflow"
NEW_EXPERIMENT = re.compile(r"Experiment with name .* not found\. Creating it\.$")
# The loggers to which Lightning's packages give a console handler of their own when imported.
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def quiet_library_noise() -> None:
    for category, message, module in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message, category, module)
    logging.getLogger(LIGHTNING_INFO_LOGGER).addFilter(not_an_advertisement)
    logging.getLogger(MLFLOW_LOGGER).addFilter(not_a_new_experiment)


def not_an_advertisement(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(ADVERTISEMENT)


def not_a_new_experiment(record: logging.LogRecord) -> bool:
    """Lightning's MLflow logger warns when it creates an experiment: a sweep's first run does."""
    return not NEW_EXPERIMENT.match(record.getMessage())


def lightning_logs_through_root() -> None:
    """Lightning's records go to the root logger's handlers (Hydra's console and train.log), once.

    `import lightning` gives the `lightning` logger a console handler whatever is set up, which
    prints each of its lines a second time; `lightning.pytorch` and `lightning.fabric` get one and
    stop propagating if they are imported before logging is set up (resume= reads a checkpoint
    first), which keeps their lines out of train.log. Where the root logger has handlers, this is
    undone: the rule Lightning applies itself when logging is set up first.
    """
    logs_through_root(LIGHTNING_LOGGERS)


def logs_through_root(names: tuple[str, ...]) -> None:
    """The named loggers' records to the root logger's handlers, without their own console
    handlers (MLflow gives its logger one when imported: aelab.mlflow_run calls this then)."""
    if not logging.getLogger().handlers:
        return  # a script without logging set up: the libraries' own handlers are its console
    for name in names:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True
