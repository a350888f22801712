#!/usr/bin/env bash
# Run projects' GPU tests and benchmarks on a machine without uv (the no-install path), and pack
# each project's results for the GPU into $OUT/results-<project>.tar (the lent GPU machine returns at
# most 8 files). Usage, from the repo root:
#   MLSYS_GIT_COMMIT=<sha> OUT=/some/dir bash scripts/device-bench.sh PROJECT [PROJECT...]
# MLSYS_GIT_COMMIT records the commit when the tree was copied without its .git folder.
set -uo pipefail
: "${OUT:?set OUT to a folder for the packed results}"
eval "$(python3 scripts/noinstall.py)"
export PYTHONUNBUFFERED=1
status=0
python3 -m mlsys_bench env --reprobe || status=1
for project in "$@"; do
    path=$(python3 -m mlsys_bench projects --json | python3 -c "import json,sys; print({p['name']: p['path'] for p in json.load(sys.stdin)}['$project'])") || { status=1; continue; }
    echo "=== $project: GPU tests"
    python3 -m pytest -q -m gpu "$path" -p no:cacheprovider || status=1
    echo "=== $project: benchmark"
    python3 -m mlsys_bench bench "$project" --scale gpu --tables --no-progress || status=1
    tar cf "$OUT/results-$project.tar" -C "$path" results || status=1
done
exit $status
