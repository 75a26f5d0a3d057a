#!/usr/bin/env bash
# The GitHub workflow's smoke job, the same on any machine (`make ci-smoke`): a colorization run of
# debug=smoke on a generated image folder (nothing downloads), eval.py on its checkpoint, and
# scripts/colorize.py on one image. Everything it writes goes to one temp dir, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The test suite's generator: 100 smooth random PNGs in train/ and test/, two classes.
"$PYTHON" -c 'import sys; from pathlib import Path; from tests.conftest import make_image_folder
make_image_folder(Path(sys.argv[1]))' "$work/images"

# ~local: the run ignores this machine's configs/local/, as on a fresh checkout.
"$PYTHON" train.py debug=smoke task=colorization data=folder data.root="$work/images" \
  data.subset=null paths.cache_dir="$work/cache" trainer.accelerator=cpu "~local" \
  hydra.run.dir="$work/run"
"$PYTHON" eval.py ckpt_path="$work/run/checkpoints/best.ckpt" trainer.accelerator=cpu \
  hydra.run.dir="$work/eval"
"$PYTHON" scripts/colorize.py --ckpt "$work/run/checkpoints/best.ckpt" \
  "$work/images/test/cats/0000.png" --out-dir "$work/colorized"

# The run completed, eval.py scored its best checkpoint as the run did (on the CPU, exactly), and
# the colorized image was written.
"$PYTHON" - "$work" <<'CHECK'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
run = json.loads((work / "run/metrics.json").read_text())
scored = json.loads((work / "eval/eval.json").read_text())["metrics"]
problems = [f"the run's status is {run['status']!r}"] if run["status"] != "completed" else []
if scored != run["test"]:
    problems.append(f"eval.py scored {scored}, the run {run['test']}")
if not (work / "colorized/0000.png").stat().st_size:
    problems.append("colorized/0000.png is empty")
if problems:
    sys.exit("ci-smoke failed: " + "; ".join(problems))
print(
    f"ci-smoke: trained (test psnr {scored['psnr']:.2f} dB), eval.py scored its checkpoint the same, "
    "colorized one image"
)
CHECK
