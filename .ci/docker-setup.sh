#!/usr/bin/env bash
# Makes the python tool's docker backend testable: a docker daemon and a locally imported image
# (no registry is reachable from CI). Best effort throughout: on any failure it prints one line
# saying the docker tests will skip and exits 0, so CI never fails because of docker.
# Safe to run by hand and to rerun: whatever is already there is left alone.
set -uo pipefail

IMAGE="${PYTHON_DOCKER_IMAGE:-oss-serve-python:bookworm}"   # tests/test_tools_python.py looks for this name
SUITE=bookworm
DAEMON_WAIT_S=30

give_up() {
    echo "docker setup: $1; docker backend tests will skip"
    exit 0
}

daemon_answers() { docker info >/dev/null 2>&1; }

# The Debian mirror this machine already uses: the first non-security URI in the apt sources
# (deb822 `URIs:` lines or one-line `deb URI suite` entries).
debian_mirror() {
    local mirror
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
             | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
    if [ -z "$mirror" ]; then
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                 | awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }')
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

missing_packages=()
command -v docker >/dev/null || missing_packages+=(docker.io)
command -v debootstrap >/dev/null || missing_packages+=(debootstrap)
if [ ${#missing_packages[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || give_up "apt-get is not available to install ${missing_packages[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_packages[@]}") \
        >/dev/null 2>&1 || give_up "could not install ${missing_packages[*]}"
fi

if ! daemon_answers; then
    command -v dockerd >/dev/null || give_up "dockerd is not installed"
    # Left running after CI on purpose: later runs (and the tests) reuse it.
    nohup dockerd >/tmp/oss-serve-dockerd.log 2>&1 &
    for _ in $(seq "$DAEMON_WAIT_S"); do
        daemon_answers && break
        sleep 1
    done
    daemon_answers || give_up "dockerd did not answer within ${DAEMON_WAIT_S} s (see /tmp/oss-serve-dockerd.log)"
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || give_up "debootstrap is not installed"
    rootfs=$(mktemp -d /tmp/oss-serve-rootfs.XXXXXX) || give_up "no temporary folder for the rootfs"
    trap 'rm -rf "$rootfs"' EXIT
    mirror=$(debian_mirror)
    debootstrap --variant=minbase --include=python3-minimal "$SUITE" "$rootfs" "$mirror" \
        >/tmp/oss-serve-debootstrap.log 2>&1 \
        || give_up "debootstrap of $SUITE from $mirror failed (see /tmp/oss-serve-debootstrap.log)"
    tar -C "$rootfs" -c . | docker import - "$IMAGE" >/dev/null 2>&1 || give_up "docker import of $IMAGE failed"
fi

echo "docker setup: daemon $(docker info --format '{{.ServerVersion}}' 2>/dev/null) with image $IMAGE ready"
