"""What each aelab setting may hold: dataclass schemas per config node, checked before a run.

OmegaConf checks the types (a value is assigned to OmegaConf.structured(schema)); each field's
metadata adds the range and the words for the message. Only the keys a schema names are checked,
so open nodes (the Trainer's and optimizer's other arguments, +KEY=VALUE additions) and saved
configs of resumed runs and DDP ranks pass as long as the named keys hold valid values. Nothing
here imports torch: a bad value is refused before the run loads it.
"""

import re
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, ValidationError
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from aelab.choices import (
    ACTIVATIONS,
    CLASSIFICATION_LOSSES,
    DEFAULT_TEMPERATURE,
    EVAL_SPLITS,
    NORMS,
    OPTIMIZED_METRICS,
    POOLINGS,
    REGRESSION_LOSSES,
    SOURCES,
    SPLITS,
    UPSAMPLE_MODES,
)
from aelab.config.arguments import TRAINER
from aelab.config.signatures import arguments_of
from aelab.config.suggest import closest
from aelab.data.folder_layout import check_folder_root
from aelab.errors import AelabError
from aelab.mlflow_run import mlflow_logger_problem

SEED_MAX = 2**32 - 1  # numpy's seed range, which Lightning's seed_everything hands the seed to


def choices(name: str, words: tuple[str, ...]) -> type[Enum]:
    """An Enum of a setting's words, from the table the code builds with (aelab.choices)."""
    return Enum(name, {word: word for word in words})


Source = choices("Source", SOURCES)
Split = choices("Split", SPLITS)
Pooling = choices("Pooling", POOLINGS)
UpsampleMode = choices("UpsampleMode", UPSAMPLE_MODES)
Activation = choices("Activation", ACTIVATIONS)
Norm = choices("Norm", NORMS)
Loss = choices("Loss", REGRESSION_LOSSES + CLASSIFICATION_LOSSES)
EvalSplit = choices("EvalSplit", EVAL_SPLITS)
OptimizedMetric = choices("OptimizedMetric", tuple(OPTIMIZED_METRICS))


def rule(allowed: str, ok: Callable[[Any], bool], note: str = "") -> dict[str, Any]:
    """A field's metadata: what is allowed in words, the range check on the converted value, and
    a note for the message when the value is refused. A field without one: its type only."""
    return {"allowed": allowed, "ok": ok, "note": note}


SEED = rule(f"an integer from 0 to {SEED_MAX}", lambda v: 0 <= v <= SEED_MAX)
POSITIVE = rule("an integer ≥ 1", lambda v: v is None or v >= 1)
FRACTION = rule("a number between 0 and 1 (both excluded)", lambda v: 0 < v < 1)
THREADS = rule("an integer ≥ 1 (torch threads) or null (all cores)", lambda v: v is None or v >= 1)


@dataclass
class DataSchema:
    source: Source = Source.cifar10
    download: bool = True
    image_size: int = field(default=32, metadata=POSITIVE)
    split: Split = Split.pooled
    val_fraction: float = field(default=0.1, metadata=FRACTION)
    test_fraction: float = field(default=0.1, metadata=FRACTION)
    split_seed: int = field(default=0, metadata=SEED)
    subset: int | None = field(
        default=None,
        metadata=rule("an integer ≥ 3 (images kept) or null (all)", lambda v: v is None or v >= 3),
    )
    batch_size: int = field(default=128, metadata=POSITIVE)
    eval_batch_size: int = field(default=250, metadata=POSITIVE)
    shuffle_seed: int = field(default=42, metadata=SEED)
    on_device: bool = True


@dataclass
class ModelSchema:
    widths: list[int] = field(
        default_factory=lambda: [8, 12, 16],
        metadata=rule(
            "a non-empty list of positive integers (the channels of each encoder conv)",
            lambda v: len(v) > 0 and all(w > 0 for w in v),
        ),
    )
    kernel_size: int = field(
        default=3,
        metadata=rule(
            "a positive odd integer ('same' padding keeps the size only for odd kernels)",
            lambda v: v > 0 and v % 2 == 1,
        ),
    )
    pooling: Pooling = Pooling.max
    upsample_mode: UpsampleMode = UpsampleMode.nearest
    activation: Activation = Activation.relu
    norm: Norm = Norm.none
    blocks: int = field(
        default=0,
        metadata=rule(
            "an integer ≥ 0 (residual blocks after each hidden conv; 0: one conv per stage)",
            lambda v: v >= 0,
        ),
    )
    latent_channels: int | None = field(
        default=None,
        metadata=rule(
            "an integer ≥ 1 (a 1×1 conv makes the code that many channels) or null (the last "
            "width's)",
            lambda v: v is None or v >= 1,
        ),
    )
    skips: bool = False


TEMPERATURE = rule(
    "a number ≥ 0 (the annealed mean's temperature: 1 the mean, 0 the mode)",
    lambda v: v is None or v >= 0,
)


@dataclass
class TaskSchema:
    loss: Loss = Loss.bce
    rebalance: float = field(
        default=0.5,
        metadata=rule(
            "a number from 0 to 1 (class rebalancing: 0 off, 0.5 Zhang's λ = 0.5, 1 inverse frequency)",
            lambda v: 0 <= v <= 1,
        ),
    )
    ce_stride: int = field(
        default=4,
        metadata=rule(
            "1, 2 or 4 (loss=ce: logits at 1/ce_stride of the image size)",
            lambda v: v in (1, 2, 4),
        ),
    )
    temperature: float = field(default=DEFAULT_TEMPERATURE, metadata=TEMPERATURE)


@dataclass
class OptimizerSchema:
    lr: float = field(default=1e-3, metadata=rule("a positive number", lambda v: v > 0))


def batch_limit(value: float) -> bool:
    """Lightning's limit_*_batches: a count (a whole number ≥ 1) or a fraction in (0, 1]."""
    return 0 < value <= 1 or (value > 1 and value % 1 == 0)


def duration_seconds(value: Any) -> float | None:
    """Lightning's max_time in seconds ("DD:HH:MM:SS" or timedelta's keywords); None if neither."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, str):
        parts = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", value.strip())  # Lightning's Timer's
        if not parts:
            return None
        value = dict(
            zip(("days", "hours", "minutes", "seconds"), map(int, parts.groups()), strict=True)
        )
    if not isinstance(value, dict):
        return None
    try:
        return timedelta(**value).total_seconds()
    except TypeError:
        return None


NO_STEP = "0 would train no step, and the run would test its untrained weights as its result"
TRAIN_BATCHES = rule(
    "an integer ≥ 1 (batches per epoch), a fraction in (0, 1] of them, or null (all)",
    lambda v: v is None or batch_limit(v),
    NO_STEP,
)
VAL_BATCHES = rule(
    "0 (no validation), an integer ≥ 1 (batches), a fraction in (0, 1] of them, or null (all)",
    lambda v: v is None or v == 0 or batch_limit(v),
)
SCORED_BATCHES = rule(
    "an integer ≥ 1 (batches), a fraction in (0, 1] of them, or null (all)",
    lambda v: v is None or batch_limit(v),
    "0 would evaluate nothing, and there would be no scores to report",
)


@dataclass
class TrainerSchema:
    max_epochs: int = field(
        default=15,
        metadata=rule(
            "a positive integer (the epochs to train)",
            lambda v: v >= 1,
            "Lightning's -1 (no limit) would train until the process is killed, and 0 would "
            "report a completed run with untrained weights. To stop after a number of steps "
            "instead, set trainer.max_steps=N as well, with max_epochs at least the epochs those "
            "steps take",
        ),
    )
    max_steps: int = field(
        default=-1,
        metadata=rule(
            "-1 (no step limit) or a positive integer", lambda v: v == -1 or v >= 1, NO_STEP
        ),
    )
    max_time: Any = field(
        default=None,
        metadata=rule(
            "a duration above zero, DD:HH:MM:SS (e.g. 00:12:00:00) or "
            "{days:D,hours:H,minutes:M,seconds:S}, or null (no time limit)",
            lambda v: v is None or (duration_seconds(v) or 0) > 0,
            "A zero duration stops the run before its first step, and it would test its "
            "untrained weights as its result",
        ),
    )
    limit_train_batches: float | None = field(default=None, metadata=TRAIN_BATCHES)
    limit_val_batches: float | None = field(default=None, metadata=VAL_BATCHES)
    limit_test_batches: float | None = field(default=None, metadata=SCORED_BATCHES)
    overfit_batches: float = field(
        default=0.0,
        metadata=rule(
            "0 (off), an integer ≥ 1 (batches) or a fraction in (0, 1]",
            lambda v: v == 0 or batch_limit(v),
        ),
    )
    fast_dev_run: Any = field(
        default=False,
        metadata=rule(
            "false",
            lambda v: v is False or v == 0,
            "Lightning's fast_dev_run trains a batch without checkpoints or logs and would still "
            "end as a completed run; aelab's quick end-to-end check is debug=smoke",
        ),
    )
    log_every_n_steps: int = field(default=50, metadata=POSITIVE)
    check_val_every_n_epoch: int | None = field(default=1, metadata=POSITIVE)
    accumulate_grad_batches: int = field(default=1, metadata=POSITIVE)
    gradient_clip_val: float | None = field(
        default=None,
        metadata=rule("a number ≥ 0 or null (no clipping)", lambda v: v is None or v >= 0),
    )


MODULE_NAMES = rule(
    "a list of module names (your own networks' packages, e.g. [my_pkg])",
    lambda v: all(re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", m) for m in v),
)


@dataclass
class TrainSchema:
    """configs/train.yaml's own keys; the nodes below have schemas of their own."""

    seed: int = field(default=42, metadata=SEED)
    threads: int | None = field(default=None, metadata=THREADS)
    resume: str | None = None
    ckpt_path: str | None = None
    init_weights: str | None = None
    trusted_modules: list[str] = field(default_factory=list, metadata=MODULE_NAMES)
    optimized_metric: OptimizedMetric = OptimizedMetric["val/psnr"]


@dataclass
class EvalSchema:
    """configs/eval.yaml's own keys."""

    ckpt_path: str | None = None
    split: EvalSplit = EvalSplit.test
    threads: int | None = field(default=None, metadata=THREADS)
    temperature: float | None = field(default=None, metadata=TEMPERATURE)
    trusted_modules: list[str] = field(default_factory=list, metadata=MODULE_NAMES)


@dataclass
class EvalTrainerSchema:
    """eval.py's trainer settings, laid over the run's: the split it evaluates needs a batch."""

    limit_val_batches: float | None = field(default=None, metadata=SCORED_BATCHES)
    limit_test_batches: float | None = field(default=None, metadata=SCORED_BATCHES)


TRAIN_NODES: dict[str, type] = {
    "": TrainSchema,
    "data": DataSchema,
    "model": ModelSchema,
    "task": TaskSchema,
    "optimizer": OptimizerSchema,
    "trainer": TrainerSchema,
}
EVAL_NODES: dict[str, type] = {"": EvalSchema, "data": DataSchema, "trainer": EvalTrainerSchema}
SCHEMAS = {"train": TRAIN_NODES, "eval": EVAL_NODES}


def config_problems(cfg: DictConfig, nodes: dict[str, type]) -> list[str]:
    """One sentence per invalid value of the keys the schemas name; [] when all are valid."""
    problems = []
    for path, schema in nodes.items():
        node = OmegaConf.select(cfg, path, throw_on_resolution_failure=False) if path else cfg
        if not isinstance(node, DictConfig):
            continue  # an absent node (data=null in eval.py): nothing of it to check
        checked = OmegaConf.structured(schema)
        for spec in fields(schema):
            key = f"{path}.{spec.name}" if path else spec.name
            problem = _value_problem(node, checked, spec, key)
            if problem:
                problems.append(problem)
    problems += _cross_problems(cfg, nodes)
    return problems + unknown_argument_problems(cfg)


def unknown_argument_problems(cfg: DictConfig, path: str = "") -> list[str]:
    """One sentence per key of a `_target_` node that its class's constructor does not take
    (`+trainer.max_epoch=1`): refused here, in a second, instead of by the constructor. eval.py's
    trainer node, laid over the run's Trainer config, is checked against the Trainer's."""
    problems = []
    for key in cfg:
        if not path and key == "hydra":
            continue  # Hydra's own settings: not arguments of anything aelab builds
        try:
            child = cfg[key]
        except OmegaConfBaseException:  # an interpolation only the run can resolve
            continue
        if isinstance(child, DictConfig):
            problems += unknown_argument_problems(child, f"{path}{key}.")
    target = cfg.get("_target_") if "_target_" in cfg else TRAINER if path == "trainer." else None
    arguments = arguments_of(target) if isinstance(target, str) else None
    if arguments is None or arguments.open:
        return problems
    for key in cfg:
        if isinstance(key, str) and not key.startswith("_") and key not in arguments.names:
            close = closest(key, list(arguments.names))
            hint = f"did you mean {path}{close}?" if close else "remove it"
            problems.append(
                f"{path}{key}: {target} takes no argument {key!r} ({hint}; ~{path}{key} drops it)"
            )
    return problems


def _value_problem(node: DictConfig, checked: DictConfig, spec, key: str) -> str | None:
    """Why node's value of spec.name is not allowed, or None (also when absent or unresolved)."""
    name = spec.name
    if (
        name not in node
        or OmegaConf.is_missing(node, name)
        or OmegaConf.is_interpolation(node, name)
    ):
        return None  # ???: the run says which keys lack values; ${...}: its target is checked
    try:
        value = node[name]
    except InterpolationResolutionError:
        return None
    plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    if _holds_text(plain) and not _takes_text(spec.type):
        return _sentence(key, plain, spec)  # '5' quoted: OmegaConf would convert, the run would not
    try:
        checked[name] = plain  # OmegaConf's type check (and conversion: 1 → 1.0)
    except ValidationError:
        return _sentence(key, plain, spec)
    ok = spec.metadata.get("ok")
    return None if ok is None or ok(checked[name]) else _sentence(key, plain, spec)


def _cross_problems(cfg: DictConfig, nodes: dict[str, type]) -> list[str]:
    """Rules between two keys: loss=ce is colorization's; the pooled split's fractions leave
    images to train on."""
    problems = _loss_problems(cfg) + _missing_problems(cfg) if "task" in nodes else []
    if "task" in nodes and (problem := mlflow_logger_problem(cfg.get("logger"))):
        problems.append(problem)
    if "data" not in nodes:
        return problems
    return problems + _split_problems(cfg) + (_root_problems(cfg) if "task" in nodes else [])


def _loss_problems(cfg: DictConfig) -> list[str]:
    task = OmegaConf.select(cfg, "task", throw_on_resolution_failure=False)
    if not isinstance(task, DictConfig):
        return []
    try:
        target, loss = task.get("_target_"), task.get("loss")
    except InterpolationResolutionError:
        return []
    if loss == "ce" and isinstance(target, str) and not target.endswith("ColorizationTask"):
        return [
            "loss=ce: classification over quantized ab is for task=colorization only; with "
            "task=reconstruction use loss=bce or loss=mse"
        ]
    return []


def _missing_problems(cfg: DictConfig) -> list[str]:
    """Settings left at ??? (Hydra's own and paths.output_dir are Hydra's to fill)."""
    missing = [k for k in _missing_keys(cfg) if not k.startswith(("hydra.", "paths."))]
    return [f"{key} has no value: give it on the command line, {key}=VALUE" for key in missing]


def _missing_keys(node: DictConfig, path: str = "") -> list[str]:
    """The ??? keys under node, found without resolving interpolations (some only a job can)."""
    found = []
    for key in node:
        if OmegaConf.is_missing(node, key):
            found.append(f"{path}{key}")
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig):
            found += _missing_keys(node[key], f"{path}{key}.")
    return found


def folder_root_needed(source: str) -> str:
    """Why a folder source without a root cannot start (the config and the data module say it)."""
    return (
        f"data={source} needs data.root=PATH: the directory that holds the images "
        "(PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg). To set it once for this "
        "machine, copy configs/local/default.yaml.example to configs/local/default.yaml"
    )


def _root_problems(cfg: DictConfig) -> list[str]:
    """An image folder that is not given or not there, refused before torch loads."""
    data = OmegaConf.select(cfg, "data", throw_on_resolution_failure=False)
    try:
        source, root = data.get("source"), data.get("root")
    except (InterpolationResolutionError, AttributeError):
        return []
    if source != "folder" or OmegaConf.is_missing(data, "root"):
        return []
    if not root:
        return [folder_root_needed(source)]
    if isinstance(root, str) and not Path(root).expanduser().is_dir():
        return [
            f"data.root={_shown(root)}: the image folder {Path(root).expanduser().absolute()} "
            "does not exist (a directory laid out as ROOT/train/<class>/*.jpg and "
            "ROOT/test/<class>/*.jpg, e.g. data.root=../shared/data/cifar10-jpg)"
        ]
    try:
        check_folder_root(Path(root).expanduser().resolve())  # one level off: which root works
    except AelabError as error:
        return [str(error).rstrip(".")]
    return []


def _split_problems(cfg: DictConfig) -> list[str]:
    data = OmegaConf.select(cfg, "data", throw_on_resolution_failure=False)
    if not isinstance(data, DictConfig) or data.get("split", "pooled") != "pooled":
        return []
    try:
        val, test = data.get("val_fraction"), data.get("test_fraction")
    except InterpolationResolutionError:
        return []
    numbers = all(isinstance(f, int | float) and not isinstance(f, bool) for f in (val, test))
    if numbers and 0 < val < 1 and 0 < test < 1 and val + test >= 1:
        return [
            f"data.val_fraction={val} and data.test_fraction={test} leave no images to train "
            "on: with data.split=pooled the train split is 1 − val − test, so their sum must "
            "be below 1 (the defaults are 0.1 and 0.1)"
        ]
    return []


def _holds_text(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(_holds_text(item) for item in value)
    return isinstance(value, str)


def _takes_text(hint: Any) -> bool:
    return any(
        t is str or t is Any or (isinstance(t, type) and issubclass(t, Enum))
        for t in _members(hint)
    )


def _members(hint: Any) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) in (typing.Union, list):
        return typing.get_args(hint)  # a list's: its items' type
    return (hint,)


def _allowed(spec) -> str:
    """The field's allowed values in words."""
    kinds = [t for t in _members(spec.type) if t is not type(None)]
    optional = len(kinds) < len(_members(spec.type))
    kind = kinds[0]
    if spec.metadata.get("allowed"):
        words = spec.metadata["allowed"]
        optional = optional and "null" not in words
    elif isinstance(kind, type) and issubclass(kind, Enum):
        words = "one of " + ", ".join(member.name for member in kind)
    elif kind is bool:
        words = "true or false"
    else:
        words = "text"
    return words + (" or null" if optional else "")


def _sentence(key: str, value: Any, spec) -> str:
    default = spec.default if spec.default is not MISSING else spec.default_factory()
    example = f"{key}={_shown(default.name if isinstance(default, Enum) else default)}"
    sentence = f"{key}={_shown(value)}: {key} must be {_allowed(spec)}, e.g. {example}"
    note = spec.metadata.get("note", "")
    return sentence + (f". {note}" if note else "") + _close_member(value, spec)


def _close_member(value: Any, spec) -> str:
    """' (did you mean X?)' for a mistyped option of an Enum key."""
    kinds = [t for t in _members(spec.type) if isinstance(t, type) and issubclass(t, Enum)]
    if not kinds or not isinstance(value, str):
        return ""
    close = closest(value, [member.name for member in kinds[0]])
    return f" (did you mean {close}?)" if close else ""


def _shown(value: Any) -> str:
    """A value as it would be typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_shown(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (_reads_as_non_text(value) or any(c in value for c in " ,[]{}=")):
        return repr(value)  # quoted, as it must be typed to stay text
    return str(value)


def _reads_as_non_text(text: str) -> bool:
    """Whether the command line would read `text` unquoted as a number, boolean or null."""
    if text.lower() in ("", "true", "false", "null"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_arguments(node: str, **values: Any) -> None:
    """The schema's rules for a constructor called from Python, not from a config: each rule is
    written once, here, whichever way the class is reached."""
    problems = config_problems(OmegaConf.create({node: values}), {node: TRAIN_NODES[node]})
    if problems:
        raise AelabError(f"Invalid argument {problems[0]}.")


def check_config(cfg: DictConfig, kind: str = "train") -> None:
    """Raise AelabError naming every invalid aelab setting of a train.py or eval.py config."""
    problems = config_problems(cfg, SCHEMAS[kind])
    if not problems:
        return
    fix = (
        "Fix it on the command line (or in the config file that sets it) and run again."
        if len(problems) == 1
        else "Fix them on the command line (or in the config files that set them) and run again."
    )
    if len(problems) == 1:
        raise AelabError(f"Invalid setting {problems[0]}. {fix}")
    raise AelabError(f"Invalid settings: {'; '.join(problems)}. {fix}")
