#!/usr/bin/env bash
# Prepare this machine for `just bench-pipeline` (idempotent, safe to re-run):
#   - nginx, aria2c and curl from Debian packages when missing (needs root for apt-get);
#   - bench/.venvs/peers: Celery, taskiq + taskiq-redis, httpx, psycopg, asyncpg, psutil (also runs
#     the bench's own driver);
#   - bench/.venvs/arq: arq, which pins redis-py < 6 and so cannot share a venv with taskiq-redis.
# Versions are the ones the issue's figures were measured with; PINS=0 takes the latest instead.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venvs=${BENCH_VENVS:-$(dirname "$here")/.venvs}
python=${PYTHON:-python3.11}

missing=()
for tool in nginx:nginx-light aria2c:aria2 curl:curl; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]} (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ${PINS:-1} == 1 ]]; then
    peers=("redis[hiredis]==8.1.0" "hiredis==3.5.0" "celery[redis]==5.7.0" "kombu==5.7.0"
           "taskiq==0.13.0" "taskiq-redis==1.2.4" "aiohttp==3.14.5" "psycopg[binary]==3.3.9"
           "httpx==0.28.1" "psutil==7.2.2" "asyncpg==0.32.0")
    arq=("arq==0.28.0" "redis[hiredis]==5.3.1" "hiredis==3.5.0" "aiohttp==3.14.5"
         "asyncpg==0.32.0" "psutil==7.2.2")
else
    peers=("redis[hiredis]" "celery[redis]" taskiq taskiq-redis aiohttp "psycopg[binary]" httpx
           psutil asyncpg)
    arq=(arq "redis[hiredis]" aiohttp asyncpg psutil)
fi

install() {  # install VENV PACKAGES...: skipped when the same list is already installed
    local venv=$1
    shift
    local stamp="$venv/.bench-packages"
    [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
    if [[ ! -f $stamp || $(cat "$stamp") != "$*" ]]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
        echo "$*" >"$stamp"
    fi
}
install "$venvs/peers" "${peers[@]}"
install "$venvs/arq" "${arq[@]}"
echo "bench ready: $venvs/peers $venvs/arq" >&2
