#!/usr/bin/env bash
# Prepare a Docker engine with Compose v2 and an offline base image for tests/test_compose_stack.py,
# on a Debian machine (as root) that reaches Debian's and PyPI's registries but not Docker Hub.
#
#   scripts/docker_sandbox.sh [prepare]   idempotent; prints the env file to source on its last line
#   scripts/docker_sandbox.sh stop        stop the dockerd that `prepare` started (nothing else)
#
# What `prepare` does, each step skipped when its result is already there:
#   1. docker.io (engine) and debootstrap from apt; start dockerd unless an engine already answers.
#   2. Compose v2: trixie's docker-compose .deb fetched with `apt-get download` under a private apt
#      configuration (no change to the system's apt state) and unpacked with `dpkg-deb -x`; the docker
#      CLI finds it through DOCKER_CONFIG's cliPluginsExtraDirs.
#   3. A Debian bookworm root made by debootstrap and imported as an image (Docker Hub is unreachable).
#   4. A wheelhouse that pip fills on the host from pyproject.toml's dependencies as they are now,
#      then a venv installed from it in a container with no network, committed as the base image.
# Caches live in $MINEDRAFT_SANDBOX_CACHE (default /var/cache/minedraft-sandbox), never in the repo.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MINEDRAFT_SANDBOX_CACHE:-/var/cache/minedraft-sandbox}
ENV_FILE=$CACHE/env.sh
STARTED_MARK=/run/minedraft-sandbox.dockerd-pid   # present only when we started dockerd
OS_IMAGE=minedraft-sandbox-os:bookworm
PYVER=3.11                                         # bookworm's python3: the wheelhouse targets it
T0=$SECONDS

log() { echo "[docker_sandbox +$((SECONDS - T0))s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# retry N CMD...: registries hiccup; try a few times with a growing pause before giving up.
retry() {
    local n=$1 i; shift
    for ((i = 1; i <= n; i++)); do
        "$@" && return 0
        ((i < n)) && { log "attempt $i/$n failed: $*; retrying in $((10 * i))s"; sleep $((10 * i)); }
    done
    return 1
}

# The Debian mirror this machine's apt already uses (so a proxy or local mirror is honoured).
debian_mirror() {
    [[ -n ${MINEDRAFT_DEBIAN_MIRROR:-} ]] && { echo "$MINEDRAFT_DEBIAN_MIRROR"; return; }
    local uri
    uri=$( { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}';
             grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
               | sed 's/\[[^]]*\]//' | awk '{print $2}'; } | grep -v security | head -n1)
    [[ -n $uri ]] || die "no Debian mirror found in /etc/apt; set MINEDRAFT_DEBIAN_MIRROR"
    echo "$uri"
}

engine_up() { timeout 20 docker info >/dev/null 2>&1; }

stop_engine() {
    [[ -f $STARTED_MARK ]] || { log "no dockerd started by this script"; return 0; }
    local pid; pid=$(cat "$STARTED_MARK")
    # The mark may be stale (a reboot, a killed run): only ever signal a dockerd.
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]; then
        log "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$pid" 2>/dev/null && { log "dockerd still running after 60s; SIGKILL"; kill -KILL "$pid"; }
    fi
    rm -f "$STARTED_MARK"
}

# 1. engine -------------------------------------------------------------------------------------
install_apt_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    ((${#missing[@]})) || return 0
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    retry 3 timeout 600 apt-get update -qq || die "apt-get update failed"
    retry 3 timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

start_engine() {
    engine_up && { log "Docker engine already answers"; return 0; }
    log "starting dockerd (log: $CACHE/dockerd.log)"
    # setsid: the daemon must outlive this script; its pid goes to STARTED_MARK for `stop`.
    setsid dockerd >>"$CACHE/dockerd.log" 2>&1 </dev/null &
    echo $! >"$STARTED_MARK"
    for _ in $(seq 60); do engine_up && { log "dockerd up"; return 0; }; sleep 1; done
    tail -n 30 "$CACHE/dockerd.log" >&2
    die "dockerd did not answer within 60s"
}

# 2. Compose v2 ---------------------------------------------------------------------------------
install_compose() {
    local plugdir=$CACHE/compose/usr/libexec/docker/cli-plugins
    if [[ ! -x $plugdir/docker-compose ]]; then
        log "fetching Compose v2 (trixie docker-compose) with a private apt configuration"
        local apt=$CACHE/apt-trixie
        rm -rf "$apt"; mkdir -p "$apt"/{lists/partial,cache/archives/partial,parts,debs}
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) trixie main" \
            >"$apt/sources.list"
        # Own sources, lists and cache; the system's package state is only read.
        local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
                    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
                    -o "Dir::State::status=/dev/null" -o "Debug::NoLocking=1")
        retry 3 timeout 600 apt-get "${opts[@]}" --error-on=any -qq update || die "apt-get update (trixie) failed"
        (cd "$apt/debs" && retry 3 timeout 600 apt-get "${opts[@]}" -qq download docker-compose) \
            || die "apt-get download docker-compose failed"
        rm -rf "$CACHE/compose.tmp"
        dpkg-deb -x "$apt"/debs/docker-compose_*.deb "$CACHE/compose.tmp"
        [[ -x $CACHE/compose.tmp/usr/libexec/docker/cli-plugins/docker-compose ]] \
            || die "docker-compose .deb has no cli-plugins/docker-compose"
        rm -rf "$CACHE/compose" && mv "$CACHE/compose.tmp" "$CACHE/compose" && rm -rf "$apt"
    fi
    mkdir -p "$CACHE/docker-config"
    printf '{"cliPluginsExtraDirs": ["%s"]}\n' "$plugdir" >"$CACHE/docker-config/config.json"
    export DOCKER_CONFIG=$CACHE/docker-config
    docker compose version >&2 || die "docker compose does not run"
}

# 3. bookworm OS image --------------------------------------------------------------------------
make_os_image() {
    docker image inspect "$OS_IMAGE" >/dev/null 2>&1 && return 0
    local tar=$CACHE/rootfs-bookworm.tar
    if [[ ! -f $tar ]]; then
        log "debootstrap bookworm (minbase + python3-venv)"
        local dir=$CACHE/rootfs.tmp
        rm -rf "$dir"
        retry 2 timeout 1800 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$dir" "$(debian_mirror)" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        tar -C "$dir" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar" && rm -rf "$dir"
    fi
    log "importing $OS_IMAGE"
    docker import "$tar" "$OS_IMAGE" >/dev/null
}

# 4. wheelhouse + venv base image ----------------------------------------------------------------
requirements() {
    # pyproject's build requirements and runtime dependencies now (other issues add theirs); torch
    # pinned to the version whose CPU wheel this host has (the index default pulls CUDA wheels).
    python3 - "$ROOT/pyproject.toml" "${MINEDRAFT_SANDBOX_TORCH:-torch==2.13.0}" <<'EOF'
import re, sys, tomllib
data = tomllib.load(open(sys.argv[1], "rb"))
reqs = list(data["build-system"]["requires"]) + ["wheel"] + list(data["project"]["dependencies"])
print("\n".join(sys.argv[2] if re.match(r"torch\b", r) else r for r in reqs))
EOF
}

make_base_image() {
    local reqs key wh tag
    reqs=$(requirements)
    key=$(printf '%s\n%s\n%s' "$reqs" "$PYVER" "$(docker image inspect -f '{{.Id}}' "$OS_IMAGE")" \
          | sha256sum | cut -c1-12)
    tag=minedraft-sandbox-base:$key
    if ! docker image inspect "$tag" >/dev/null 2>&1; then
        wh=$CACHE/wheelhouse/$key
        if [[ ! -f $wh/.complete ]]; then
            log "pip download into $wh: ${reqs//$'\n'/ }"
            rm -rf "$wh"; mkdir -p "$wh"
            printf '%s\n' "$reqs" >"$wh/requirements.txt"
            local plats=(--platform manylinux2014_x86_64) m
            for m in $(seq 17 36); do plats+=(--platform "manylinux_2_${m}_x86_64"); done
            # Wheels for the image's Python and platform, whatever the host's Python is.
            retry 3 timeout 1800 python3 -m pip download --disable-pip-version-check --progress-bar off \
                --dest "$wh" --only-binary=:all: --python-version "$PYVER" --implementation cp \
                "${plats[@]}" -r "$wh/requirements.txt" >"$CACHE/pip-download.log" 2>&1 \
                || { tail -n 20 "$CACHE/pip-download.log" >&2; die "pip download failed (log: $CACHE/pip-download.log)"; }
            touch "$wh/.complete"
        fi
        log "installing the venv from the wheelhouse (no network) -> $tag"
        local cid rc=0
        cid=$(docker create --network none -v "$wh:/wheelhouse:ro" "$OS_IMAGE" sh -c \
              'python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-index --find-links /wheelhouse \
                 --no-cache-dir --disable-pip-version-check -q -r /wheelhouse/requirements.txt')
        timeout 1800 docker start -a "$cid" >&2 || rc=$?
        [[ $rc == 0 ]] || { docker rm -f "$cid" >/dev/null; die "venv install failed (exit $rc)"; }
        docker commit -c 'ENV VIRTUAL_ENV=/opt/venv' \
            -c 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            "$cid" "$tag" >/dev/null
        docker rm "$cid" >/dev/null
        # Older bases and wheelhouses (dependencies changed since) only take disk space.
        docker images --format '{{.Repository}}:{{.Tag}}' minedraft-sandbox-base | grep -vx "$tag" \
            | xargs -r docker rmi >/dev/null 2>&1 || true
        find "$CACHE/wheelhouse" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
    fi
    echo "$tag"
}

# -----------------------------------------------------------------------------------------------
case ${1:-prepare} in
    stop) stop_engine; exit 0 ;;
    prepare) ;;
    *) die "usage: $0 [prepare|stop]" ;;
esac
[[ $(id -u) == 0 ]] || die "must run as root (apt-get, dockerd, debootstrap)"
mkdir -p "$CACHE"
install_apt_packages
start_engine
install_compose
make_os_image
BASE=$(make_base_image)
cat >"$ENV_FILE" <<EOF
export DOCKER_CONFIG=$CACHE/docker-config
export MINEDRAFT_TEST_BASE_IMAGE=$BASE
EOF
log "ready in $((SECONDS - T0))s: base image $BASE"
echo "$ENV_FILE"
