#!/usr/bin/env bash
# Makes a local Docker engine and sandboxkit's test image available; safe to run again.
#
#   1. engine: if `docker info` answers, it is used as is. Otherwise (root and apt-get needed)
#      docker.io and debootstrap are installed if missing, dockerd is started in the background
#      (log: $SANDBOXKIT_DOCKERD_LOG) and `docker info` is polled until it answers.
#   2. image: if $SANDBOXKIT_DOCKER_IMAGE does not exist, it is built from Debian's packages
#      (debootstrap minbase + python3, from the mirror apt uses) and imported; no registry needed.
#   3. checks: python3 runs in the image, also as uid 65534, with `--network none`; the
#      resource and hardening flags the Docker backend uses are tried (warnings only).
#
# Exit status 0 when the engine answers and the image passes the python3 checks.
# Containers are only ever started with `--network none`.
#
# Environment:
#   SANDBOXKIT_DOCKER_IMAGE    image name (default sandboxkit-test/python:bookworm)
#   SANDBOXKIT_DOCKERD_LOG     dockerd log file (default /tmp/sandboxkit-dockerd.log)
#   SANDBOXKIT_DOCKERD_TIMEOUT seconds to wait for dockerd to answer (default 60)
#   SANDBOXKIT_DEBIAN_MIRROR   Debian mirror for debootstrap (default: the one apt uses)
#   SANDBOXKIT_ROOTFS_PARENT   where the temporary root file system is built (default /var/tmp)
set -euo pipefail

IMAGE="${SANDBOXKIT_DOCKER_IMAGE:-sandboxkit-test/python:bookworm}"
SUITE=bookworm
DOCKERD_LOG="${SANDBOXKIT_DOCKERD_LOG:-/tmp/sandboxkit-dockerd.log}"
DOCKERD_TIMEOUT="${SANDBOXKIT_DOCKERD_TIMEOUT:-60}"
ROOTFS_PARENT="${SANDBOXKIT_ROOTFS_PARENT:-/var/tmp}"
export DEBIAN_FRONTEND=noninteractive

PROG="docker-engine.sh"
ROOTFS=""
APT_UPDATED=0
STEP_NAMES=()
STEP_TIMES=()
CURRENT_STEP=""
CURRENT_T0=0
SCRIPT_T0=0

# ---------------------------------------------------------------- helpers

now_us() { local t="$EPOCHREALTIME"; echo "${t//[!0-9]/}"; }   # microseconds, locale-proof

fmt_us() { printf '%d.%02d s' $(($1 / 1000000)) $(($1 % 1000000 / 10000)); }

say() { echo "[$PROG] $*"; }

die() { echo "[$PROG] ERROR: $*" >&2; exit 1; }

step_begin() { CURRENT_STEP="$1"; CURRENT_T0=$(now_us); say "-- $1"; }

step_end() {  # step_end RESULT
    local dt=$(($(now_us) - CURRENT_T0))
    STEP_NAMES+=("$CURRENT_STEP: $1"); STEP_TIMES+=("$dt")
    say "   $1 ($(fmt_us "$dt"))"
    CURRENT_STEP=""
}

summary() {
    local i
    say "summary:"
    for i in "${!STEP_NAMES[@]}"; do
        printf '[%s]   %10s  %s\n' "$PROG" "$(fmt_us "${STEP_TIMES[$i]}")" "${STEP_NAMES[$i]}"
    done
    printf '[%s]   %10s  total\n' "$PROG" "$(fmt_us $(($(now_us) - SCRIPT_T0)))"
}

remove_rootfs() {
    [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
    # Unmount whatever debootstrap may have left mounted inside (deepest first) before
    # deleting, and never cross into another file system while deleting.
    local m
    awk -v p="$ROOTFS" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/self/mounts \
        | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS" || say "warning: could not fully remove $ROOTFS"
    ROOTFS=""
}

on_exit() {
    local rc=$?
    remove_rootfs
    if [ "$rc" -ne 0 ] && [ -n "$CURRENT_STEP" ]; then
        echo "[$PROG] FAILED in step '$CURRENT_STEP' after $(fmt_us $(($(now_us) - CURRENT_T0)))" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

is_root() { [ "$(id -u)" -eq 0 ]; }

docker_answers() { command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; }

image_exists() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

need_root_and_apt() {  # need_root_and_apt WHAT
    is_root || die "$1 needs root (run: sudo $0), or start a Docker engine yourself and build the image as root once."
    command -v apt-get >/dev/null 2>&1 || die "$1 needs apt-get (Debian/Ubuntu); install Docker and debootstrap by hand."
}

apt_install() {  # apt_install PACKAGE...  (apt-get update runs at most once per script run)
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -q || die "apt-get update failed"
        APT_UPDATED=1
    fi
    # Recommends are skipped: docker.io would pull needrestart (an apt hook) and tools not needed here.
    apt-get install -y -q --no-install-recommends "$@" || die "apt-get install $* failed"
}

pid_alive() {  # pid_alive PID: the process exists and is not a zombie (PID 1 may reap late)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat="${stat##*) }"   # fields after "pid (comm) "; the first is the state
    [ "${stat%% *}" != Z ]
}

dockerd_pid_alive() {  # true when /var/run/docker.pid names a live dockerd
    local pid
    pid=$(cat /var/run/docker.pid 2>/dev/null) || return 1
    [ -n "$pid" ] && pid_alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

# ---------------------------------------------------------------- step 1: engine

ensure_engine() {
    step_begin "engine"
    if docker_answers; then
        step_end "already answering (server $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
        return
    fi
    if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST}" != "unix:///var/run/docker.sock" ]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local dockerd for a remote/custom host."
    fi
    if ! is_root && [ -S /var/run/docker.sock ] && [ ! -w /var/run/docker.sock ]; then
        die "a Docker engine seems to run, but this user may not use /var/run/docker.sock (join the 'docker' group, or run as root)."
    fi
    need_root_and_apt "Starting a Docker engine"
    step_end "not answering"

    step_begin "packages"
    local pkgs=()
    { command -v dockerd && command -v docker; } >/dev/null 2>&1 || pkgs+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
    if [ "${#pkgs[@]}" -gt 0 ]; then
        apt_install "${pkgs[@]}"
        step_end "installed ${pkgs[*]}"
    else
        step_end "docker.io and debootstrap already installed"
    fi

    step_begin "dockerd"
    local pid=""
    if dockerd_pid_alive; then
        pid=$(cat /var/run/docker.pid)
        say "   a dockerd is already running (pid $pid); waiting for it"
    else
        # Pid files of a killed dockerd and of the containerd it managed: a stale dockerd pid
        # file blocks a new start, and a containerd pid file naming a not yet reaped zombie makes
        # dockerd wait 15 s for that containerd, then give up.
        rm -f /var/run/docker.pid
        local cpid
        cpid=$(cat /var/run/docker/containerd/containerd.pid 2>/dev/null) && ! pid_alive "$cpid" \
            && rm -f /var/run/docker/containerd/containerd.pid
        : >"$DOCKERD_LOG"
        # 9>&-: the daemon must not inherit (and so hold forever) this script's lock.
        setsid dockerd </dev/null >>"$DOCKERD_LOG" 2>&1 9>&- &
        pid=$!
        say "   started dockerd (pid $pid, log $DOCKERD_LOG)"
    fi

    local deadline=$(($(now_us) + DOCKERD_TIMEOUT * 1000000))
    until docker_answers; do
        if ! pid_alive "$pid"; then
            echo "--- last lines of $DOCKERD_LOG:" >&2; tail -n 40 "$DOCKERD_LOG" >&2 || true
            die "dockerd (pid $pid) exited before answering; rerun to start a new one"
        fi
        if [ "$(now_us)" -ge "$deadline" ]; then
            echo "--- last lines of $DOCKERD_LOG:" >&2; tail -n 40 "$DOCKERD_LOG" >&2 || true
            die "docker info did not answer within ${DOCKERD_TIMEOUT}s"
        fi
        sleep 0.25
    done
    step_end "started (server $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
}

# ---------------------------------------------------------------- step 2: image

debian_mirror() {  # prints the Debian mirror apt uses (deb822 URIs: first, then one-line deb)
    if [ -n "${SANDBOXKIT_DEBIAN_MIRROR:-}" ]; then echo "$SANDBOXKIT_DEBIAN_MIRROR"; return; fi
    {
        # deb822: "URIs: a [b ...]" -- commented lines (e.g. snapshot addresses) never match.
        cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }'
        # one-line: "deb [options] URI suite components"
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -E -n 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p'
    } | grep -m1 -E '/debian/?$' || true
}

build_image() {
    step_begin "image check"
    if image_exists; then
        step_end "$IMAGE exists, not rebuilt"
        return
    fi
    step_end "$IMAGE missing, building it"

    if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
        # Without root and apt (e.g. a laptop running Docker): use the official slim image.
        step_begin "pull python:3.12-slim"
        docker pull -q python:3.12-slim >/dev/null && docker tag python:3.12-slim "$IMAGE" \
            || die "cannot build $IMAGE without root and apt-get, and 'docker pull python:3.12-slim' failed"
        step_end "tagged python:3.12-slim as $IMAGE"
        return
    fi

    step_begin "debootstrap prerequisites"
    need_root_and_apt "Building $IMAGE (debootstrap)"
    if command -v debootstrap >/dev/null 2>&1; then
        step_end "debootstrap present"
    else
        apt_install debootstrap
        step_end "installed debootstrap"
    fi

    step_begin "mirror"
    local mirror
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || die "no Debian mirror (URI ending in /debian) found in apt's sources; set SANDBOXKIT_DEBIAN_MIRROR"
    step_end "$mirror"

    step_begin "debootstrap ($SUITE, minbase, python3)"
    mkdir -p "$ROOTFS_PARENT"
    ROOTFS=$(mktemp -d "$ROOTFS_PARENT/sandboxkit-rootfs.XXXXXX")
    local keyring=() dlog="$ROOTFS.debootstrap.log"
    [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] \
        && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    if ! debootstrap --variant=minbase --include=python3 --components=main "${keyring[@]}" \
            "$SUITE" "$ROOTFS" "$mirror" >"$dlog" 2>&1; then
        echo "--- last lines of the debootstrap log:" >&2; tail -n 30 "$dlog" >&2
        [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
        rm -f "$dlog"
        die "debootstrap failed"
    fi
    rm -f "$dlog"
    # Downloaded packages and package lists are of no use in a network-less sandbox.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* 2>/dev/null || true
    step_end "$(du -sm --one-file-system "$ROOTFS" | cut -f1) MB root file system"

    step_begin "import"
    tar --numeric-owner -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --change "LABEL org.sandboxkit.built-by=scripts/docker-engine.sh org.sandboxkit.suite=$SUITE" \
        --message "sandboxkit test image: debootstrap $SUITE minbase + python3" \
        - "$IMAGE" >/dev/null
    remove_rootfs
    BUILT=1
    step_end "imported $IMAGE"
}

# ---------------------------------------------------------------- step 3: checks

check_image() {
    local out
    step_begin "check: python3 runs"
    out=$(docker run --rm --network none "$IMAGE" python3 -c 'import sys; print(1, sys.version.split()[0])' 2>&1) \
        && [ "${out%% *}" = 1 ] || image_broken "python3 -c 'print(1)' gave: $out"
    step_end "ok (Python ${out#* })"

    step_begin "check: python3 as uid 65534"
    out=$(docker run --rm --network none --user 65534:65534 "$IMAGE" \
        python3 -c 'import os; print(os.getuid())' 2>&1) && [ "$out" = 65534 ] \
        || image_broken "running as --user 65534:65534 gave: $out"
    step_end "ok"

    # The Docker backend's hardening/limit flags; failures are reported, not fatal.
    step_begin "check: hardening flags"
    local flags=(--memory 64m --pids-limit 32 --cap-drop ALL --security-opt no-new-privileges
                 --read-only --tmpfs /tmp:rw,size=16m --init)
    if out=$(docker run --rm --network none --user 65534:65534 "${flags[@]}" "$IMAGE" \
            python3 -c 'print("ok")' 2>&1) && [ "$out" = ok ]; then
        step_end "ok (${flags[*]})"
    else
        say "   warning: combined flags failed: $out"
        local bad=() f
        for f in "--memory 64m" "--pids-limit 32" "--cap-drop ALL" "--security-opt no-new-privileges" \
                 "--read-only" "--tmpfs /tmp:rw,size=16m" "--init"; do
            # shellcheck disable=SC2086  # each entry is a flag and its value
            docker run --rm --network none $f "$IMAGE" python3 -c 'print("ok")' >/dev/null 2>&1 || bad+=("$f")
        done
        step_end "WARNING: not supported by this engine: ${bad[*]:-(none alone; only in combination)}"
    fi
}

image_broken() {
    if [ "${BUILT:-0}" -eq 1 ]; then
        docker image rm -f "$IMAGE" >/dev/null 2>&1 || true
        die "$1 (the freshly built image was removed)"
    fi
    die "$1 (remove the image with 'docker image rm $IMAGE' to rebuild it)"
}

# ---------------------------------------------------------------- main

SCRIPT_T0=$(now_us)
BUILT=0
# One run at a time (concurrent CI jobs would otherwise race on dockerd and the import).
LOCK="${TMPDIR:-/tmp}/sandboxkit-docker-engine.$(id -u).lock"
if command -v flock >/dev/null 2>&1 && exec 9>>"$LOCK"; then
    flock -w 600 9 || die "another run still holds $LOCK after 600 s"
fi

ensure_engine
build_image
check_image

step_begin "engine facts"
facts=$(docker info --format 'storage driver {{.Driver}}, cgroup v{{.CgroupVersion}} ({{.CgroupDriver}}), {{.NCPU}} CPUs' 2>/dev/null || echo '?')
size=$(docker image inspect --format '{{.Size}}' "$IMAGE" 2>/dev/null || echo 0)
step_end "server $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'); $facts; image $IMAGE $((size / 1000000)) MB"

summary
say "done"
