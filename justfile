# Downlink's everyday commands. `just` itself comes from the rust-just package in .venv.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := env("PYTHON", "python3")
stamp := ".venv/.installed-pyproject"

# List the recipes.
default:
    @just --list

# Create .venv and install the project (editable, with dev tools) when missing or stale.
_venv:
    #!/usr/bin/env bash
    set -euo pipefail
    if [[ -x .venv/bin/downlink && -f {{ stamp }} && ! pyproject.toml -nt {{ stamp }} ]]; then
        exit 0
    fi
    if [[ ! -x .venv/bin/python ]]; then
        {{ python }} -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    touch {{ stamp }}

# Run the whole stack locally (starts Redis/PostgreSQL itself when none answer).
up *ARGS: _venv
    .venv/bin/downlink stack {{ ARGS }}

# Run the tests; ARGS go to pytest (e.g. `just test tests/shared -k events`).
test *ARGS: _venv
    .venv/bin/pytest {{ ARGS }}

# Lint, check formatting and type-check.
lint: _venv
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy

# Type-check only.
types: _venv
    .venv/bin/mypy

# Format the code and apply the safe lint fixes.
fmt: _venv
    .venv/bin/ruff format .
    .venv/bin/ruff check --fix .

# Run every benchmark in bench/ (each prints JSON).
bench: _venv
    #!/usr/bin/env bash
    set -euo pipefail
    shopt -s nullglob
    for script in bench/*.py; do
        echo "== ${script}" >&2
        .venv/bin/python "${script}"
    done

# Downlink end to end beside Celery, arq, taskiq, curl and aria2c in one sitting (JSON; see
# bench/README.md). ARGS go to the bench, e.g. `just bench-pipeline --quick` or
# `just bench-pipeline --workloads tiny5k --systems downlink,taskiq`.
bench-pipeline *ARGS: _venv
    bash bench/pipeline/setup.sh
    bench/.venvs/peers/bin/python bench/pipeline {{ ARGS }}

# Downlink's task worker beside arq and Celery (JSON; see bench/README.md, "Tasks").
bench-tasks *ARGS: _venv
    bash bench/pipeline/setup.sh && bench/.venvs/peers/bin/python bench/tasks {{ ARGS }}
