#!/usr/bin/env bash
# One idempotent set-up step (`make setup`; `make demo` and `make test` call it):
#   1. uv (pinned) into .cache/, 2. the locked environment into .venv/ (uv.lock),
#   3. detectron2 v0.6 as pure Python (envs/install_detectron2.py), 4. the sdists the embedded data
#   is built from (envs/sdists.txt), 5. DVC's default remote: a local directory, 6. the snakemake profiles
#   `local` and `slurm` by name (links in ~/.config/snakemake to profiles/).
# Downloads are cached (uv's cache, .cache/sdists); the Makefile re-runs this only when its inputs change.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
UV_DIR=".cache/uv-${UV_VERSION}"
UV="${UV_DIR}/bin/uv"
PYTHON_FOR_UV="${PYTHON:-python3}"

if [ ! -x "$UV" ]; then
  echo "setup: installing uv ${UV_VERSION} into ${UV_DIR}"
  "$PYTHON_FOR_UV" -m pip install --isolated --quiet --disable-pip-version-check --target "$UV_DIR" "uv==${UV_VERSION}"
fi

echo "setup: syncing .venv with uv.lock"
# --inexact keeps detectron2, which is installed from its sdist below rather than from the lock. Bytecode is
# compiled once here: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile what it
# imports (half of a `snakemake -n` start).
"$UV" sync --frozen --inexact --python 3.11 --compile-bytecode

echo "setup: detectron2"
.venv/bin/python envs/install_detectron2.py

echo "setup: source distributions for the embedded datasets"
.venv/bin/python -m pipeline.sdist labelme >/dev/null

REMOTE="${BACKBONE_REPRO_DVC_REMOTE:-$HOME/.cache/backbone-repro/dvc-remote}"
if ! .venv/bin/dvc remote list --local 2>/dev/null | grep -q .; then
  mkdir -p "$REMOTE"
  .venv/bin/dvc remote add --local --default local "$REMOTE" >/dev/null
  echo "setup: DVC default remote -> $REMOTE (set BACKBONE_REPRO_DVC_REMOTE to choose another)"
fi
# `snakemake --profile slurm` / `--profile local` find profiles by name in the user's config folder.
PROFILES="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake"
mkdir -p "$PROFILES"
for name in local slurm; do
  if [ ! -e "$PROFILES/$name" ]; then  # absent, or a link to a clone that is gone
    ln -sfn "$PWD/profiles/$name" "$PROFILES/$name"
    echo "setup: snakemake profile '$name' -> $PWD/profiles/$name"
  elif [ "$(readlink "$PROFILES/$name")" != "$PWD/profiles/$name" ]; then
    echo "setup: note: $PROFILES/$name is another profile; use --profile profiles/$name here"
  fi
done
echo "setup: done"
