"""A run's data identity: recorded in RUN/data.json at its start, checked at every later use.

data.json holds "id" (a SHA-256 over the source, the image list's fingerprint, the image size,
the subset, the split mode, the split seed and the split itself) and its parts: the absolute
root the images were read from, the fingerprint, the image counts per part, the split's settings,
the split hash (of the indices each split takes) and the split sizes. RUN/data-files.json.gz keeps
the list of files itself, so a check can say which images were added, removed or changed.

The fingerprint is every file's path (relative to the root), size and modification time, not
a hash of the files' bytes: it costs nothing beyond the stat per file of the listing every run
makes anyway to key its decoded-images cache, where a content hash opens and reads every file
(CIFAR-10: 60,000 files, 236 MB) at every start, resume, eval and report. An edit that
keeps a file's size and modification time to the nanosecond goes unseen; any ordinary edit, copy
or re-export changes the modification time.

resume= and eval.py read the images from the recorded root (a relative data.root means where the
run started, wherever the command runs now) and refuse, naming what changed, when the data there
is no longer the run's. Runs from before data.json: their data cannot be checked; they say so.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import yaml

from aelab.errors import AelabError

log = logging.getLogger(__name__)

DATA_JSON = "data.json"
FILES = "data-files.json.gz"
IDENTITY_KEYS = ("source", "fingerprint", "image_size", "subset", "split", "split_seed")
SETTINGS = (
    "source",
    "image_size",
    "subset",
    "split",
    "split_seed",
    "val_fraction",
    "test_fraction",
)
SHOWN = 3  # file names shown per kind of change
EVAL_CHOICES = ("root", *SETTINGS)  # eval.py data.KEY=VALUE of these: other data, on purpose


def describe(datamodule) -> dict:
    """data.json's contents for a datamodule after setup (its listing and split indices)."""
    listing = datamodule.listing
    split_hash = hashlib.sha256()
    for name in sorted(datamodule.split_indices):
        split_hash.update(name.encode() + datamodule.split_indices[name].numpy().tobytes())
    facts = {key: getattr(datamodule, key) for key in SETTINGS}
    facts |= {"fingerprint": listing.digest(), "split_hash": split_hash.hexdigest()}
    identity = {key: facts[key] for key in (*IDENTITY_KEYS, "split_hash")}
    return {
        "id": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(),
        "root": str(listing.root),
        **facts,
        "images": {part: len(entries) for part, entries in listing.files.items()},
        "split_sizes": datamodule.split_sizes(),
    }


def record(run_dir: Path, datamodule) -> dict:
    """Write run_dir/data.json and the file list beside it; returns data.json's contents."""
    described = describe(datamodule)
    _replace(run_dir / FILES, gzip.compress(json.dumps(datamodule.listing.files).encode(), 6))
    _replace(run_dir / DATA_JSON, (json.dumps(described, indent=2) + "\n").encode())
    return described


def _replace(path: Path, data: bytes) -> None:
    """Write through a temporary file of this process's own, renamed into place."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def recorded(run_dir: Path) -> dict | None:
    """run_dir/data.json's contents; None for a run from before data.json was recorded."""
    path = Path(run_dir) / DATA_JSON
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise AelabError(
            f"{path} cannot be read ({error}), so the data this run used is not known. Restore "
            "the file, or delete it to treat the run as one from before data identities were "
            "recorded (its data is then not checked)."
        ) from None
    if not isinstance(saved, dict) or not all(
        isinstance(saved.get(k), str) for k in ("id", "root")
    ):
        raise AelabError(f"{path} is not a data identity written by aelab; restore or delete it.")
    return saved


def use_run_data(datamodule, run_dir: Path) -> dict | None:
    """Point the datamodule at the images the run read: the recorded absolute root (for a run
    from before data.json, its config's root taken from the dir the run started in). Returns
    the record, None for such an older run."""
    saved = recorded(run_dir)
    root = saved["root"] if saved else root_as_started(run_dir, datamodule.root)
    if not Path(root).exists():
        raise AelabError(
            f"The run {run_dir} read its images from {root}, which no longer exists: the "
            "folder was moved, renamed or deleted. Put it back at that path (or link it there); "
            "to score the run's checkpoint on images elsewhere, give them explicitly: "
            "python eval.py ckpt_path=... data.root=NEW_PATH."
        )
    datamodule.root = root
    return saved


def root_as_started(run_dir: Path, root: str) -> str:
    """root made absolute against the dir the run was started in (its .hydra/hydra.yaml)."""
    path = Path(str(root)).expanduser()
    if path.is_absolute():
        return str(path)
    try:
        saved = yaml.safe_load((Path(run_dir) / ".hydra" / "hydra.yaml").read_text())
        cwd = saved["hydra"]["runtime"]["cwd"]
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return str(path)
    return str(Path(cwd) / path)


def differences(run_dir: Path, datamodule, saved: dict) -> list[str]:
    """What differs between the data the run recorded and the datamodule's, in words; [] when
    it is the same data (the same id, wherever the root now is)."""
    now = describe(datamodule)
    if now["id"] == saved["id"]:
        return []
    found = []
    if now["fingerprint"] != saved.get("fingerprint"):
        found += _file_changes(run_dir, saved, datamodule.listing.files)
    found += [
        f"data.{key} is {now[key]}, the run's was {saved[key]}"
        for key in SETTINGS
        if key in saved and saved[key] != now[key]
    ]
    found = found or ["the split itself differs (the same images and settings cut another way)"]
    if now["root"] != saved["root"]:
        found.insert(0, f"the images are read from {now['root']}, the run's from {saved['root']}")
    return found


def _file_changes(run_dir: Path, saved: dict, files: dict[str, list]) -> list[str]:
    """Images added, removed and changed since the run's file list was recorded."""
    try:
        before = json.loads(gzip.decompress((Path(run_dir) / FILES).read_bytes()))
    except (OSError, ValueError, EOFError):  # no list kept: compare the counts
        counts = {part: len(entries) for part, entries in files.items()}
        return [f"the image files differ (now {counts}, the run had {saved.get('images')})"]
    old = {name: (size, mtime) for rows in before.values() for name, size, mtime in rows}
    new = {name: (size, mtime) for rows in files.values() for name, size, mtime in rows}
    kinds = {
        "added": [name for name in new if name not in old],
        "removed": [name for name in old if name not in new],
        "changed (another size or modification time)": [
            name for name in new if name in old and tuple(old[name]) != tuple(new[name])
        ],
    }
    found = [
        f"{len(names)} image(s) {kind}: {', '.join(names[:SHOWN])}"
        + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
        for kind, names in kinds.items()
        if names
    ]
    return found or ["the image files are listed in another order"]


def check(run_dir: Path, datamodule, saved: dict, refused: str, remedy: str) -> None:
    """Raise AelabError naming what changed if the datamodule's data is not the run's."""
    found = differences(run_dir, datamodule, saved)
    if found:
        raise mismatch(run_dir, found, refused, remedy)


def mismatch(run_dir: Path, found: list[str], refused: str, remedy: str) -> AelabError:
    """The one paragraph for data that is no longer the run's: what, what changed, what to do."""
    return AelabError(
        f"{refused}: its data is no longer what {run_dir} recorded in {DATA_JSON} at its start: "
        f"{'; '.join(found)}. {remedy}"
    )


def record_or_check(run_dir: Path, datamodule, resuming: bool) -> None:
    """At a run's start, record its data; on its resume, check the data is still the same."""
    root = Path(datamodule.root).expanduser().resolve()
    if datamodule.source == "folder" and Path(run_dir).resolve().is_relative_to(root):
        raise AelabError(
            f"The run dir {run_dir} lies inside data.root {root}: the images the run writes "
            "(preview.png) would join its own data, so its resume and eval.py would find the data "
            "changed, and later runs would train on them. Put the run elsewhere (hydra.run.dir or "
            "hydra.sweep.dir outside the image folder)."
        )
    if not resuming:
        record(run_dir, datamodule)
        return
    saved = recorded(run_dir)
    if saved is None:
        log.warning(
            "%s has no %s (it started before aelab recorded a run's data), so the data it "
            "resumes on cannot be checked against the data it started on; recording it now.",
            run_dir,
            DATA_JSON,
        )
        record(run_dir, datamodule)
        return
    check(
        run_dir,
        datamodule,
        saved,
        "The run cannot resume",
        "A resumed run must go on with the images it started with, or its test split could hold "
        "images it trained on. Restore the folder as it was, or start a new run on the images as "
        "they are now (python train.py with the run's overrides, or init_weights= its last.ckpt).",
    )


def evaluation_data(datamodule, run_dir: Path, given: dict) -> dict:
    """eval.py's data: set up and compared with the run's, as eval.json's data_* keys.

    `given`: the data settings eval.py's command line gave. Without any, the run's own images are
    read (from where the run read them) and a change since the run is refused; with them, the
    differences are reported.
    """
    explicit = any(key in given for key in EVAL_CHOICES)
    saved = recorded(run_dir) if "root" in given else use_run_data(datamodule, run_dir)
    datamodule.setup("test")
    data_id = describe(datamodule)["id"]
    if saved is None:
        note = (
            f"{run_dir} has no {DATA_JSON} (it started before aelab recorded a run's "
            "data), so whether these are the images it was trained and tested on is not known"
        )
        log.warning("%s.", note)
        return {"data_matches_run": None, "data_differences": [note], "data_id": data_id}
    found = differences(run_dir, datamodule, saved)
    if found and not explicit:
        raise mismatch(
            run_dir,
            found,
            "eval.py cannot score the run on its own data",
            "Restore the images as they were, or score the checkpoint on the data as it is now "
            f"by naming it: python eval.py ckpt_path=... data.root={datamodule.root} "
            "(eval.json then records that the data is not the run's).",
        )
    if found:
        log.warning("Evaluating on other data than the run's: %s.", "; ".join(found))
    return {"data_matches_run": not found, "data_differences": found, "data_id": data_id}
