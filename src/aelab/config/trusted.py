"""A config read back from a run dir or a checkpoint is data, never code.

`_target_` names what Hydra builds. On the user's own command line that is the user's code; in a
run dir or a checkpoint it may be anyone's, so what aelab builds from one comes only from classes
aelab names: its own, torch's optimizers and schedulers, Lightning's Trainer, loggers and callbacks.
A name is trusted for what it resolves to, not for how it is spelled: `aelab.runtime.train.os.system`
and `torch.optim.optimizer.torch.save` resolve through module attributes to functions of other
modules, and are refused. Only modules under the trusted ones are imported to find out.

A user's own network lives in the user's own module: the user trusts it by naming it for the
process (`trusted_modules=[my_pkg]` for train.py and eval.py, `--trust my_pkg` for the scripts,
`trusted_modules=` of load_from_checkpoint), never by what a saved config or checkpoint says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import import_module
from types import ModuleType
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aelab.errors import AelabError

# The modules whose classes a saved config may name (a class counts where it is defined).
TRUSTED_MODULES = (
    "aelab",
    "torch.optim",
    "lightning.pytorch.loggers",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.trainer.trainer",
)
# Modules the user named for this process, besides aelab's own (trusting()).
_USER_TRUSTED: list[str] = []
# The names under which Lightning exports its Trainer, outside the module that defines it.
TRUSTED_ALIASES = ("lightning.Trainer", "lightning.pytorch.Trainer")
# Keys whose value names code to run: Hydra's, and Lightning's hyperparameter for a class's builder.
CODE_KEYS = ("_target_", "_instantiator")
# What would change Hydra itself (its callbacks, logging, search path, what it composes) in a
# config that Hydra loads as its primary config, as resume= has it do.
HYDRA_KEYS = ("hydra", "defaults")
CANNOT_IMPORT = "cannot be imported"
HEADER_DIRECTIVE = re.compile(r"^\s*#\s*@", re.MULTILINE)  # `# @package hydra` moves the file
# A run's config holds a few hundred lists and mappings, 4 deep; more is a reference loop or a
# config that grows when resolved (each level referring twice to the one before).
MAX_NODES, MAX_DEPTH = 10_000, 50
# Text that only a Hydra job resolves, from its facts about the run (`${hydra:job.name}`, `${now:%H}`).
HYDRA_RUN_FACT = re.compile(r"\$\{(hydra:(runtime|job)\.[\w.]+|now:[^${}]*)\}")
DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@contextmanager
def trusting(modules: Sequence[str]) -> Iterator[None]:
    """Within the block, saved configs and checkpoints may also name classes of `modules` (a
    user's own networks): what the user named on the command line or in Python, never what a
    saved file says."""
    modules = [modules] if isinstance(modules, str) else list(modules or ())
    for module in modules:
        if not isinstance(module, str) or not DOTTED_NAME.fullmatch(module):
            raise AelabError(
                f"trusted_modules: {module!r} is not a module name; give your network's "
                "package or module, e.g. trusted_modules=[my_pkg] (--trust my_pkg for scripts)."
            )
    _USER_TRUSTED.extend(modules)
    try:
        yield
    finally:
        for module in modules:
            _USER_TRUSTED.remove(module)


def add_trust_option(parser) -> None:
    """The scripts' --trust MODULE (repeatable): the modules of your own networks that the
    checkpoints and run dirs they read may name; use as `with trusting(args.trust):`."""
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module of your own network that the checkpoints or runs may name "
        "(docs/custom_network.md); repeatable",
    )


def user_trusted() -> tuple[str, ...]:
    """The modules the user named for this process (trusting()), aelab's left out."""
    return tuple(_USER_TRUSTED)


def trusted_now() -> tuple[str, ...]:
    """aelab's trusted modules and those the user named for this process (trusting())."""
    return (*TRUSTED_MODULES, *_USER_TRUSTED)


def refuse_unsafe_yaml(text: str, source: str) -> None:
    """Raise AelabError, before a saved config's text is parsed, for what aelab never writes
    there: a header directive (`# @package hydra` makes the whole file Hydra's own settings on
    resume=), and YAML aliases (a few hundred bytes of them expand to 10⁹ settings when loaded)."""
    if HEADER_DIRECTIVE.search(text):
        found = "a '# @' header directive, which Hydra would read to make the file its own settings"
    elif any(isinstance(event, yaml.AliasEvent) for event in _yaml_events(text)):
        found = "YAML aliases (*name), which can grow a small file into billions of settings"
    else:
        return
    raise AelabError(
        f"{source} has {found}; aelab never writes one into a run's config: the file was edited "
        "or comes from elsewhere. It is refused unread. Remove it, or start a new run."
    )


def _yaml_events(text: str) -> Iterator[yaml.Event]:
    """The file's YAML events, read without building anything (an alias is not expanded); a
    syntax error is left for the loader to report."""
    try:
        yield from yaml.parse(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return


def refuse_hydra_keys(config: Any, source: str) -> None:
    """Raise AelabError if a saved config has a key that Hydra, loading it as its primary config
    (resume=), would read as its own settings: its callbacks, logging, or configs to compose."""
    found = [key for key in HYDRA_KEYS if isinstance(config, Mapping) and key in config]
    if found:
        raise AelabError(
            f"{source} has a '{found[0]}:' key: Hydra would read it as its own settings (its "
            "callbacks, logging, or configs to load) on resume=, and a run's saved config holds "
            "only the run's settings, so aelab never writes one. The file was edited or comes "
            "from elsewhere; it is refused unread. Remove the key, or start a new run."
        )


def refuse_untrusted(
    config: Any, source: str, trusted_modules: Sequence[str] | None = None
) -> None:
    """Raise AelabError, naming the setting and the class, if `config` (read from `source`) names
    code outside `trusted_modules` (default: trusted_now()) anywhere. Interpolations are resolved as they will be when it
    is built, so the runtime values it refers to (paths.output_dir) must be set first."""
    trusted_modules = trusted_now() if trusted_modules is None else tuple(trusted_modules)
    for count, (where, node) in enumerate(_containers(config, "", source, 0), start=1):
        if count > MAX_NODES:
            raise _too_large(source)
        for key in CODE_KEYS if isinstance(node, Mapping) else ():
            if key in node:
                _refuse_untrusted_name(node, key, f"{where}{key}", source, trusted_modules)


def _containers(node: Any, where: str, source: str, depth: int) -> Iterator[tuple[str, Any]]:
    """Every mapping and list in node with its position (`optimizer.`, `trainer.plugins[0].`),
    resolving interpolations on the way: a resolver (oc.create, oc.decode) can make a node."""
    if isinstance(node, Mapping):
        children = [(key, f"{where}{key}.") for key in node]
    elif isinstance(node, Sequence) and not isinstance(node, str | bytes):
        children = [(index, f"{where.removesuffix('.')}[{index}].") for index in range(len(node))]
    else:
        return
    if depth > MAX_DEPTH:
        raise _too_large(source)
    yield where, node
    for key, position in children:
        if _is_config(node) and OmegaConf.is_missing(node, key):
            continue  # ??? builds nothing: the run refuses it as a missing setting
        try:
            child = node[key]
        except OmegaConfBaseException as error:
            if _hydra_run_fact(node, key):
                continue
            raise AelabError(
                f"{source}: {position.removesuffix('.')} does not resolve ("
                f"{str(error).splitlines()[0]}), so what it would build cannot be checked. It is "
                "refused unbuilt."
            ) from None
        yield from _containers(child, position, source, depth + 1)


def _hydra_run_fact(node: Any, key: Any) -> bool:
    """Whether a value that does not resolve here is text made only of Hydra's facts about a run
    (`${hydra:job.override_dirname}`, `${now:%H-%M}`): outside a Hydra job they cannot resolve,
    and inside one they give text, never a class to build."""
    raw = OmegaConf.to_container(node, resolve=False)[key] if _is_config(node) else None
    return isinstance(raw, str) and "${" not in HYDRA_RUN_FACT.sub("", raw)


def _is_config(node: Any) -> bool:
    return isinstance(node, DictConfig | ListConfig)


def _too_large(source: str) -> AelabError:
    return AelabError(
        f"{source} holds more than {MAX_NODES:,} lists and mappings, or nests them more than "
        f"{MAX_DEPTH} deep, once its interpolations are followed, where a run's config holds a "
        "few hundred, 4 deep: a loop of references, or a config that grows when resolved. It is "
        "refused unbuilt."
    )


def _refuse_untrusted_name(
    node: Mapping, key: str, where: str, source: str, trusted_modules: Sequence[str]
) -> None:
    if isinstance(node, DictConfig) and OmegaConf.is_interpolation(node, key):
        raise AelabError(
            f"{source}: {where} is an interpolation; in a saved config the class to build must "
            "be written out. It is refused unbuilt."
        )
    name = node[key]
    problem = untrusted_because(name, trusted_modules)
    if problem == CANNOT_IMPORT and name not in TRUSTED_ALIASES and _within(name, trusted_modules):
        raise AelabError(
            f"{source}: {where} names {name!r}, of a module you trust, which cannot be imported "
            "here. Make its package importable: install it, or run with PYTHONPATH=DIR (DIR "
            "holding the package; train.py and eval.py find packages beside them, scripts/*.py "
            "do not). Nothing was built."
        )
    if problem:
        raise AelabError(
            f"{source}: {where} names {name!r}, which {problem}. A run dir or a checkpoint may "
            "come from anyone, so aelab builds from the config saved in it only classes that "
            "aelab names: its own (aelab.*), torch optimizers and schedulers (torch.optim.*), "
            "Lightning's Trainer, loggers and callbacks, and the modules you name. Nothing was "
            "built. If the run is not yours, do not use it. If it is, and it names your own "
            "network, name its module: trusted_modules=[MODULE] after eval.py or train.py "
            "resume=, --trust MODULE for the scripts (docs/custom_network.md)."
        )


def untrusted_because(name: Any, trusted_modules: Sequence[str] | None = None) -> str | None:
    """Why `name` is not a class a saved config may build, in words; None if it is one."""
    trusted_modules = trusted_now() if trusted_modules is None else tuple(trusted_modules)
    if not isinstance(name, str) or not DOTTED_NAME.fullmatch(name):
        return "is not a dotted class name"
    if name not in TRUSTED_ALIASES and not _within(name, trusted_modules):
        return f"lies outside {', '.join(trusted_modules)} (it was not imported)"
    try:
        located = locate(name)
    except Exception:  # ImportError, AttributeError, or an error of a trusted module's import
        return CANNOT_IMPORT
    if not isinstance(located, type):
        return f"is a {type(located).__name__}, not a class"
    if not _within(located.__module__, trusted_modules):
        return f"is a class of {located.__module__}, not of {', '.join(trusted_modules)}"
    return None


def locate(name: str) -> Any:
    """What Hydra's instantiate finds for `name`, found its way: from the first module, each part
    an attribute or else a submodule (hydra.utils.get_object logs every miss as an error)."""
    parts = name.split(".")
    located = import_module(parts[0])
    for index, part in enumerate(parts[1:], start=1):
        try:
            located = getattr(located, part)
        except AttributeError:
            if not isinstance(located, ModuleType):
                raise
            located = import_module(".".join(parts[: index + 1]))
    return located


def _within(name: str, modules: Sequence[str]) -> bool:
    return any(name == module or name.startswith(f"{module}.") for module in modules)
