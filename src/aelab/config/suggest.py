"""'Did you mean' for the two mistakes Hydra reports without one: a group option it cannot find
and a key that is not in the config. Runs only after Hydra has refused a command line."""

from __future__ import annotations

import difflib
import re

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from aelab import CONFIG_DIR
from aelab.config.arguments import TRAINER
from aelab.config.signatures import arguments_of

MISSING_OPTION = re.compile(r"Could not find '(?P<group>[\w/.-]+)/(?P<name>[^'/]+)'")
MISSING_KEY = re.compile(r"full_key: (?P<key>\S+)")
SWEEP = re.compile(r",|^\w+\(")  # a,b or choice(...)/range(...): a sweep's values


def did_you_mean(message: str, config_name: str, arguments: list[str]) -> str | None:
    """The corrected override for Hydra's error `message` about the command line `arguments`,
    as 'did you mean X?', or None where nothing is close."""
    option = MISSING_OPTION.search(message)
    if option:
        group, name = option["group"], option["name"]
        choices = re.findall(r"^\t(\S+)$", message.split("Available options", 1)[-1], re.M)
        close = closest(name, choices)
        return close and f"did you mean {group}={close}?"
    key = MISSING_KEY.search(message)
    if key and "not in struct" in message:
        parent, _, name = key["key"].rpartition(".")
        close = closest(name, sibling_keys(parent, config_name, arguments, key["key"]))
        if close:
            fixed = ".".join(filter(None, (parent, close)))
            typed = [a for a in arguments if a.split("=", 1)[0].lstrip("+~") == key["key"]]
            return f"did you mean {typed[0].replace(key['key'], fixed, 1) if typed else fixed}?"
    return None


def closest(word: str, candidates: list[str]) -> str | None:
    """The candidate nearest to `word`, if close; never `word` itself (nothing to correct)."""
    candidates = [c for c in candidates if c != word]
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def sibling_keys(parent: str, config_name: str, arguments: list[str], bad_key: str) -> list[str]:
    """The keys beside the mistyped one, in the config the other overrides compose."""
    groups = [p.name for p in CONFIG_DIR.iterdir() if p.is_dir()] if not parent else []
    others = [a for a in arguments if "=" in a and not a.startswith("-")]
    others = [a for a in others if a.split("=", 1)[0].lstrip("+~") != bad_key]
    others = [a for a in others if not SWEEP.search(a.split("=", 1)[1])]  # compose takes one value
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=others)
    except Exception:  # the other overrides have mistakes too: no suggestion, Hydra's error stands
        return groups
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return groups
    arguments = arguments_of(node.get("_target_") or (TRAINER if parent == "trainer" else ""))
    return groups + [str(k) for k in node] + list(arguments.names if arguments else ())
