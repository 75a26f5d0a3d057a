"""scripts/colorize.py and scripts/reconstruct.py: the command line, checked before torch loads.

aelab.analysis.predict, which needs torch, is imported only once the inputs, outputs and
--out-dir hold up.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.progress import track

from aelab.analysis.photos import open_photo, turned_upright
from aelab.config.trusted import add_trust_option, trusting
from aelab.errors import AelabError


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out-dir that is not, or cannot become, a writable directory."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "--out-dir" if existing == out_dir else f"--out-dir {out_dir} lies under a file:"
        raise AelabError(
            f"{what} {existing} is a file, not a directory. Choose a directory for the PNGs."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AelabError(
            f"--out-dir {out_dir} cannot be written: {existing} is not writable by you. Choose a "
            "directory you can write to."
        )


def check_outputs(inputs: list[Path], outputs: list[Path], overwrite: bool) -> None:
    """Never write over an input; write over an earlier output only with --overwrite."""
    real_inputs = {os.path.realpath(path) for path in inputs}
    onto_inputs = [str(out) for out in outputs if os.path.realpath(out) in real_inputs]
    if onto_inputs:
        raise AelabError(
            f"The output {', '.join(onto_inputs)} would replace an input image. Choose another "
            "--out-dir, or rename the input (outputs are named INPUT_STEM.png)."
        )
    existing = [out for out in outputs if os.path.lexists(out)]
    directories = [str(out) for out in existing if out.is_dir() and not out.is_symlink()]
    if directories:
        raise AelabError(
            f"{', '.join(directories)}: a directory where an output PNG would go. Move it away "
            "or choose another --out-dir."
        )
    if existing and not overwrite:
        names = ", ".join(out.name for out in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise AelabError(
            f"{outputs[0].parent} already holds {names}{more}, the outputs these inputs would "
            "write. Pass --overwrite to replace them, or choose another --out-dir."
        )


def main(task: str, argv: list[str] | None = None) -> int:
    """The command line of scripts/colorize.py and scripts/reconstruct.py.

    Every check runs before the first image is written; those on the inputs and outputs before
    torch loads for the checkpoint, so a mistyped path is refused in a second.
    """
    verb = "Colorize" if task == "colorization" else "Reconstruct"
    args = parser(task, verb).parse_args(argv)
    try:
        temperature = getattr(args, "temperature", None)
        if temperature is not None and not temperature >= 0:
            raise AelabError(f"--temperature must be ≥ 0 (0 is the mode), got {temperature}.")
        outputs = checked_outputs(args.inputs, args.out_dir, args.overwrite)
        from aelab.analysis import predict  # torch loads once the command line holds up

        with trusting(args.trust):  # a checkpoint of your own network: its module, named here
            if task == "colorization":
                network = predict.load_colorizer(args.ckpt, temperature)
            else:
                network = predict.load_network(args.ckpt, task)
        try:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise AelabError(f"--out-dir {args.out_dir} could not be created ({error}).") from None
        conversion = predict.conversion_for(network)
        for path in args.inputs:  # headers only: an image too large for an untiled network
            with open_photo(path) as photo:
                conversion.tiling.refuse_oversize(*photo.size, str(path))
        pairs = list(zip(args.inputs, outputs, strict=True))
        for path, out in track(pairs, description=f"{verb}", disable=len(pairs) < 2):
            with open_photo(path) as photo:
                predict.write_converted(conversion, turned_upright(photo), out)
    except AelabError as error:
        print(f"aelab: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {len(args.inputs)} image(s) to {args.out_dir}")
    return 0


def parser(task: str, verb: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"{verb} images of any size with a trained aelab {task} checkpoint; "
        "writes one PNG per input, named after it (INPUT_STEM.png)."
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="image files (jpg, png, …)")
    parser.add_argument("--ckpt", required=True, type=Path, help="a run's checkpoints/best.ckpt")
    parser.add_argument("--out-dir", required=True, type=Path, help="where the PNGs go")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace PNGs already in --out-dir (never inputs)"
    )
    add_trust_option(parser)
    if task == "colorization":
        parser.add_argument(
            "--temperature",
            type=float,
            default=None,
            help="loss=ce checkpoints: the annealed mean's temperature (1 the mean, 0 the mode; "
            "default: the run's task.temperature)",
        )
    return parser


def checked_outputs(inputs: list[Path], out_dir: Path, overwrite: bool) -> list[Path]:
    """The PNG each input becomes, once inputs, outputs and --out-dir hold up."""
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise AelabError(f"These input images do not exist: {', '.join(missing)}.")
    stems = [p.stem for p in inputs]
    clashing = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashing:
        raise AelabError(
            f"Several inputs share a name ({', '.join(clashing)}): their PNGs would overwrite "
            "each other in --out-dir. Colorize them in separate runs or rename them."
        )
    outputs = [out_dir / f"{path.stem}.png" for path in inputs]
    check_out_dir(out_dir)
    check_outputs(inputs, outputs, overwrite)
    for path in inputs:  # headers only: unreadable and oversized images, before any work
        with open_photo(path):
            pass
    return outputs
