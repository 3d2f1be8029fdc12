#!/usr/bin/env bash
# The wheel works outside the clone: build it, install it into a fresh virtual environment, make one video
# from an empty folder. Timings of the build, the install and the generate go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Nothing from the checkout or the caller's environment may leak into the fresh install.
unset PYTHONPATH VCRAFT_CHECKPOINTS VIRTUAL_ENV
now() { date +%s.%N; }
# secs START END [START END ...]: the seconds the spans took, together.
secs() { python3 -c "import sys; t = list(map(float, sys.argv[1:])); print(f'{sum(t[1::2]) - sum(t[::2]):.1f}')" "$@"; }

# A fresh environment (its creation counts in the install's time); its own pip builds the wheel, with
# hatchling in an isolated build environment.
t0=$(now)
python3 -m venv "$tmp/venv"
t1=$(now)
"$tmp/venv/bin/pip" wheel -q --no-deps -w "$tmp/dist" .
t2=$(now)
wheel=$(ls "$tmp"/dist/vcraft-*.whl)
echo "build: $(secs "$t1" "$t2") s ($(basename "$wheel"), $(du -h "$wheel" | cut -f1))" >&2

# The wheel must carry the presets and the embedded model.
"$tmp/venv/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["vcraft/configs/shapes.yaml", "vcraft/checkpoints/shapes/model.safetensors",
        "vcraft/checkpoints/shapes/adapter.safetensors", "vcraft/app/cli.py"]
missing = [n for n in need if n not in names]
assert not missing, f"missing from the wheel: {missing}"
PY

t3=$(now)
"$tmp/venv/bin/pip" install -q "$wheel"
t4=$(now)
echo "install (new venv, the wheel and its dependencies): $(secs "$t0" "$t1" "$t3" "$t4") s" >&2

mkdir "$tmp/work"
cd "$tmp/work"
# The package imported is the installed one, not the checkout's.
where=$("$tmp/venv/bin/python" -c "import vcraft; print(vcraft.__file__)")
case "$where" in "$tmp/venv/"*) ;; *) echo "vcraft imported from $where, not the fresh venv" >&2; exit 1 ;; esac

t=$(now)
"$tmp/venv/bin/vcraft" generate "a red circle moving left" --seed 1 -o circle.mp4 --device cpu
echo "generate: $(secs "$t" "$(now)") s" >&2

test -s circle.json
# The installed package finds its bundled model without a clone.
# Read whole before it is searched: `grep -q` in a pipe may close it while the command still writes.
"$tmp/venv/bin/vcraft" models > models.txt
grep -q "^shapes  *yes .* bundled " models.txt
"$tmp/venv/bin/python" -c "import imageio.v3 as iio; f = iio.imread('circle.mp4'); assert f.shape == (16, 64, 64, 3), f.shape"
echo "ok: the wheel installs and makes a video outside the clone" >&2
