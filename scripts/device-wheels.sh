#!/usr/bin/env bash
# Wheels the GPU machine lacks for mini-llm-server's HTTP service: FastAPI and its stack, opentelemetry-api
# and uvicorn's httptools parser included (the image already has httpx, anyio, h11, prometheus-client, jinja2, click), at the versions uv.lock pins, for CPython 3.12 on
# x86-64 Linux, into .whl/ (git-ignored). Then carry `.whl` in the device call and begin its command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
set -euo pipefail
cd "$(dirname "$0")/.."
pins=$(uv export --package mini-llm-server --no-hashes --no-header --no-emit-workspace |
    grep -iE '^(fastapi|starlette|uvicorn|httptools|pydantic|pydantic-core|annotated-types|typing-inspection|opentelemetry-api)==' |
    sed 's/ *;.*//')
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086  # one argument per pinned requirement
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
ls .whl
