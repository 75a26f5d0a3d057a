"""Every train.py / eval.py command in README.md and docs/ composes as written (a dry run)."""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir

from aelab import CONFIG_DIR
from aelab.config.schema import check_config
from aelab.errors import AelabError
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(?:\.venv/bin/)?python (train|eval)\.py(.*)$|^make train ARGS=\"(.*)\"")
# Hydra's own flags and arguments that only a real run can take (a path that exists, a live run).
NOT_COMPOSED = ("--help", "--cfg", "-m", "--multirun")


def documented_commands() -> list[tuple[str, str, list[str], bool]]:
    commands = []
    for page in PAGES:
        in_code = False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
                continue
            match = COMMAND.match(line.strip()) if in_code else None
            if match:
                config = "eval" if match.group(1) == "eval" else "train"
                command, _, comment = (match.group(2) or match.group(3) or "").partition(" #")
                words = shlex.split(re.sub(r"<[^>]*>", "X", command))  # <run>: a placeholder
                refused = "refused" in comment  # a page showing what aelab refuses
                commands.append((f"{page.name}: {line.strip()}", config, words, refused))
    return commands


def first_of_each_sweep(words: list[str]) -> list[str]:
    """A sweep's first job: `loss=bce,mse` → `loss=bce` (lists in brackets stay whole)."""
    chosen = []
    for word in words:
        if word in NOT_COMPOSED:
            continue
        key, _, value = word.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        chosen.append(f"{key}={value}")
    return chosen


CASES = documented_commands()


def test_the_pages_hold_commands():
    assert len(CASES) > 20


@pytest.mark.parametrize(
    ("where", "config", "words", "refused"), CASES, ids=[case[0] for case in CASES]
)
def test_a_documented_command_composes_and_passes_the_checks(where, config, words, refused):
    overrides = first_of_each_sweep(words)
    if any(word.startswith("resume=") for word in overrides):
        pytest.skip("resume= loads a saved run's config; tests/test_reliability.py runs it")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config, overrides=overrides)
    if refused:
        with pytest.raises(AelabError):
            check_config(cfg, config)
    else:
        check_config(cfg, config)  # raises, naming the setting, for a value a run would refuse
