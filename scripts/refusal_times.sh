#!/usr/bin/env bash
# How long each kind of bad command takes to be refused (docs/configuration.md's table).
# Usage: bash scripts/refusal_times.sh [PYTHON]   (run from the repository root; writes only to a temp dir)
set -u
PY=${1:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$WORK/images" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for part, count in (("train", 40), ("test", 10)):
    for name in ("a", "b"):
        folder = Path(sys.argv[1], part, name)
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
EOF
DATA=(data=folder "data.root=$WORK/images" "paths.cache_dir=$WORK/cache")
"$PY" train.py debug=smoke "${DATA[@]}" "hydra.run.dir=$WORK/rec" >/dev/null 2>&1
"$PY" train.py debug=smoke task=colorization "${DATA[@]}" "hydra.run.dir=$WORK/col" >/dev/null 2>&1
mkdir -p "$WORK/out" && cp "$(find "$WORK/images" -name '*.png' | head -1)" "$WORK/photo.png"
touch "$WORK/out/photo.png" && echo "not an image" >"$WORK/notimg.jpg"

timed() {
  local label=$1
  shift
  local start end code
  start=$(date +%s.%N)
  "$@" >/dev/null 2>"$WORK/stderr"
  code=$?
  end=$(date +%s.%N)
  printf '%-52s %5.1f s  exit %s\n' "$label" "$(echo "$end - $start" | bc)" "$code"
  rm -rf "$WORK/run"
}
RUN="hydra.run.dir=$WORK/run"
COLORIZE=("$PY" scripts/colorize.py --ckpt "$WORK/col/checkpoints/best.ckpt")
timed "data=folder without a root" "$PY" train.py data=folder '~local' "$RUN"
timed "data.root=/nonexistent" "$PY" train.py data=folder data.root=/nonexistent "$RUN"
timed "data.root one level above the image folder" "$PY" train.py data=folder "data.root=$WORK" "$RUN"
timed "+trainer.max_epoch=1" "$PY" train.py +trainer.max_epoch=1 "${DATA[@]}" "$RUN"
timed "+optimizer.lrr=1e-3" "$PY" train.py +optimizer.lrr=1e-3 "${DATA[@]}" "$RUN"
timed "colorize.py: the output exists" "${COLORIZE[@]}" --out-dir "$WORK/out" "$WORK/photo.png"
timed "colorize.py: the input is missing" "${COLORIZE[@]}" --out-dir "$WORK/o2" "$WORK/none.jpg"
timed "colorize.py: the input is not an image" "${COLORIZE[@]}" --out-dir "$WORK/o2" "$WORK/notimg.jpg"
timed "colorize.py: a reconstruction checkpoint" "$PY" scripts/colorize.py \
  --ckpt "$WORK/rec/checkpoints/best.ckpt" --out-dir "$WORK/o2" "$WORK/photo.png"
timed "init_weights= of another network" "$PY" train.py \
  "init_weights=$WORK/rec/checkpoints/best.ckpt" widths=wide "${DATA[@]}" "$RUN"
