#!/usr/bin/env bash
# Builds and caches what the systemd container tests need, keyed by content hashes:
#
#   rootfs.sh rootfs     Debian bookworm minbase rootfs with systemd, python3-venv, curl and the
#                        app user `snake` (1500:1500); cached as rootfs-<hash of this script>.tar.zst.
#                        Prints the path of the archive.
#   rootfs.sh unpack     The same rootfs, unpacked once into rootfs-<hash>/ beside the archive
#                        (containers boot it with --volatile=overlay, so it stays pristine and
#                        every test shares it). Prints the directory.
#   rootfs.sh wheels     A wheelhouse: `pip download` of examples/python-app/requirements.pip plus
#                        uv, for CPython 3.11 manylinux x86_64; cached as wheels-<hash>/, keyed by
#                        the requirements and the uv pin. Prints the directory.
#   rootfs.sh all        rootfs + unpack + wheels (what CI runs up front).
#
# The cache lives in $DEPLOY_TESTS_CACHE (default /var/cache/deploy-tests), outside any clone, so
# later runs on the same machine reuse it. Old generations are removed when a new one is built.
# The Debian mirror is the one apt is configured with (/etc/apt/sources.list.d/, sources.list).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${DEPLOY_TESTS_CACHE:-/var/cache/deploy-tests}
requirements=${DEPLOY_TESTS_REQUIREMENTS:-$repo/examples/python-app/requirements.pip}
suite=bookworm
packages=systemd,systemd-sysv,dbus,python3,python3-venv,curl,ca-certificates,iproute2
uv_pin=uv==0.13.9
app_user=snake
app_uid=1500

log() { echo "rootfs.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot, nspawn)"
mkdir -p "$cache"

# One builder at a time per cache (parallel test processes all call us).
exec 9>"$cache/.lock"
flock 9

script_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
rootfs_tar=$cache/rootfs-$script_hash.tar.zst
rootfs_dir=$cache/rootfs-$script_hash

# The first `deb` source serving $suite (not -updates/-security) with component main.
# (Each awk exits at its first match; no pipes, so pipefail cannot trip on SIGPIPE.)
debian_mirror() {
    local f found
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        # deb822 stanzas are separated by blank lines.
        found=$(awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && suites ~ ("(^| )" suite "( |$)") &&
                    comps ~ /(^| )main( |$)/ && enabled !~ /^[Nn]o$/ && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = suites = comps = uris = enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
            /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            /^Components:/ { sub(/^Components:[ \t]*/, ""); comps = $0 }
            /^Enabled:/ { sub(/^Enabled:[ \t]*/, ""); enabled = $0 }
            END { if (!found) flush() }
        ' "$f")
        if [[ -n $found ]]; then echo "$found"; return 0; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        # deb [options] URI SUITE COMPONENT...
        found=$(awk -v suite="$suite" '
            { gsub(/\[[^]]*\]/, "") }
            $1 == "deb" && $3 == suite { for (i = 4; i <= NF; i++) if ($i == "main") { print $2; exit } }
        ' "$f")
        if [[ -n $found ]]; then echo "$found"; return 0; fi
    done
}

build_rootfs() {
    [[ -f $rootfs_tar ]] && return 0
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    command -v zstd >/dev/null || die "zstd is not installed (apt-get install zstd)"
    local mirror
    mirror=$(debian_mirror)
    [[ -n $mirror ]] || die "no apt source for '$suite' main found in /etc/apt/sources.list(.d)"
    log "building $suite rootfs from $mirror (about a minute)"
    local work
    work=$(mktemp -d "$cache/.build-rootfs.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    chroot "$work/root" groupadd --gid "$app_uid" "$app_user"
    chroot "$work/root" useradd --uid "$app_uid" --gid "$app_uid" --home-dir "/home/$app_user" \
        --create-home --shell /bin/bash "$app_user"
    # Fewer files, smaller archive: nothing in the container downloads packages.
    rm -rf "$work/root"/var/cache/apt/archives/*.deb "$work/root"/var/lib/apt/lists/*
    # systemd generates a transient machine id at boot when this is empty.
    : >"$work/root/etc/machine-id"
    tar -C "$work/root" --numeric-owner --xattrs --acls -cf - . | zstd -q -T0 -6 -o "$work/rootfs.tar.zst"
    find "$cache" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$script_hash*" -exec rm -rf {} +
    mv "$work/rootfs.tar.zst" "$rootfs_tar"
    rm -rf "$work"
    trap - EXIT
    log "cached $rootfs_tar ($(du -h "$rootfs_tar" | cut -f1))"
}

unpack_rootfs() {
    [[ -f $rootfs_dir/.complete ]] && return 0
    build_rootfs
    local work
    work=$(mktemp -d "$cache/.unpack-rootfs.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    zstd -q -d -c "$rootfs_tar" | tar -C "$work" --numeric-owner --xattrs --acls -xf -
    touch "$work/.complete"
    rm -rf "$rootfs_dir"
    mv "$work" "$rootfs_dir"
    trap - EXIT
}

build_wheels() {
    [[ -f $requirements ]] || die "no requirements file at $requirements"
    local key dir
    key=$( (cat "$requirements"; echo "$uv_pin cp311 manylinux_2_17_x86_64") | sha256sum | cut -c1-16)
    dir=$cache/wheels-$key
    if [[ ! -f $dir/.complete ]]; then
        local python work
        # Any CPython with pip can download for another interpreter; prefer Debian's own.
        python=""
        for candidate in /usr/bin/python3 python3; do
            if "$candidate" -m pip --version >/dev/null 2>&1; then python=$candidate; break; fi
        done
        [[ -n $python ]] || die "no python3 with pip to download wheels (apt-get install python3-pip)"
        work=$(mktemp -d "$cache/.build-wheels.XXXXXX")
        # shellcheck disable=SC2064
        trap "rm -rf '$work'" EXIT
        log "downloading wheels for $requirements and $uv_pin"
        env -u PIP_FIND_LINKS -u PIP_NO_INDEX "$python" -m pip download --quiet --dest "$work" \
            --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --requirement "$requirements" "$uv_pin" >&2
        chmod 0755 "$work"
        touch "$work/.complete"
        find "$cache" -maxdepth 1 -name 'wheels-*' ! -name "wheels-$key" -exec rm -rf {} +
        mv "$work" "$dir"
        trap - EXIT
    fi
    echo "$dir"
}

case ${1:-all} in
    rootfs) build_rootfs; echo "$rootfs_tar" ;;
    unpack) unpack_rootfs; echo "$rootfs_dir" ;;
    wheels) build_wheels ;;
    all) unpack_rootfs; echo "$rootfs_dir"; build_wheels ;;
    *) die "usage: $0 [rootfs|unpack|wheels|all]" ;;
esac
