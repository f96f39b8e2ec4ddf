#!/usr/bin/env bash
# Packaging checks, run by .ci/run (root): builds the .deb, the .rpm and the
# OCI image archive with scripts/package.sh, installs and purges the .deb on
# this machine, installs and erases the .rpm in a throwaway root, checks the
# systemd unit with systemd-analyze, holds the binary to its size bound,
# takes the image archive apart (layout, digests, config), loads it into
# podman and a private containerd (`ctr -n k8s.io images import`) and runs
# `lbd version` from it, and lints the Containerfile. The static binary must
# also run on an older userland: the .deb is installed with dpkg in a Debian
# 11 (bullseye) chroot, where `lbd version`, `lbd check` and `lbd manifest`
# must print what they print here (the chroot: scripts/old-userland.sh,
# debootstrap once per machine, ~2 min, cached in ~/.cache/lbd-rootfs).
#
# As root:
#   tests/packaging.sh
#   LBD_PKG_SKIP_BUILD=1 tests/packaging.sh   # reuse target/packages/*
#
# Ends with "N passed, N failed, N skipped"; exits 1 if anything failed.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${LBD_PKG_OUT:-$repo/target/packages}
tmp=$(mktemp -d /tmp/lbd-pkgtest.XXXXXX)
passed=0 failed=0 skipped=0
deb_installed_by_us=0

containerd_pid=
cleanup() {
    # Leave the machine as found: the .deb this test installed goes again,
    # the containerd it started stops.
    if [[ $deb_installed_by_us == 1 ]] && dpkg -s lbd >/dev/null 2>&1; then
        dpkg -P lbd >/dev/null 2>&1 || true
    fi
    if [[ -n $containerd_pid ]]; then
        kill "$containerd_pid" 2>/dev/null || true
        wait "$containerd_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

pass() { passed=$((passed + 1)); printf 'ok      %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAILED  %s\n' "$1"; [[ -n ${2:-} ]] && printf '%s\n' "$2" | sed 's/^/        /'; return 0; }
skip() { skipped=$((skipped + 1)); printf 'skipped %s: %s\n' "$1" "$2"; }
check() { # name command...: pass when the command succeeds
    local name=$1 output
    shift
    if output=$("$@" 2>&1); then pass "$name"; else fail "$name" "$output"; fi
}
has_line() { grep -qxF -- "$2" <<<"$1"; }
finish() {
    printf '\n%d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
    [[ $failed == 0 ]]
    exit $?
}

# ---- static checks that need nothing built -----------------------------------
for s in packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm \
         packaging/rpm/post.sh packaging/rpm/preun.sh packaging/rpm/postun.sh; do
    check "$s parses (sh -n)" sh -n "$s"
done
for s in packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm; do
    check "$s is executable" test -x "$s"
done

containerfile_lint() {
    local f=packaging/Containerfile stages=() line src n=0 errs=""
    while IFS= read -r line; do
        n=$((n + 1))
        if [[ $line =~ ^FROM[[:space:]]+([^[:space:]]+)([[:space:]]+AS[[:space:]]+([^[:space:]]+))? ]]; then
            local image=${BASH_REMATCH[1]}
            [[ ( $image == *:* && $image != *:latest ) || $image == *@sha256:* ]] \
                || errs+="$f:$n: image $image has no tag (or :latest)"$'\n'
            [[ -n ${BASH_REMATCH[3]} ]] && stages+=("${BASH_REMATCH[3]}")
        elif [[ $line =~ ^COPY[[:space:]]+--from=([^[:space:]]+) ]]; then
            local from=${BASH_REMATCH[1]} found=0 s
            for s in "${stages[@]}"; do [[ $s == "$from" ]] && found=1; done
            [[ $found == 1 ]] || errs+="$f:$n: COPY --from=$from names no earlier stage"$'\n'
        elif [[ $line =~ ^COPY[[:space:]]+(.*)$ ]]; then
            # Every source (all words but the last) must exist in the build
            # context, the repository root.
            read -r -a words <<<"${BASH_REMATCH[1]}"
            for src in "${words[@]:0:${#words[@]}-1}"; do
                [[ -e $repo/$src ]] || errs+="$f:$n: COPY source $src does not exist"$'\n'
            done
        fi
    done <"$f"
    [[ ${#stages[@]} -ge 2 ]] || errs+="$f: expected a build stage and a runtime stage"$'\n'
    # The build stage copies Cargo.toml, build.rs and src/ only: any target
    # declared elsewhere would break the image build.
    while IFS= read -r line; do
        [[ $line == src/* || $line == build.rs ]] || errs+="Cargo.toml: path $line is not copied by $f"$'\n'
    done < <(sed -n 's/^path *= *"\(.*\)"/\1/p; s/^build *= *"\(.*\)"/\1/p' Cargo.toml)
    grep -q 'cargo build --release --locked' "$f" || errs+="$f: the build is not --locked"$'\n'
    [[ -z $errs ]] || { printf '%s' "$errs"; return 1; }
}
check "Containerfile: stages, tags and every COPY source exist" containerfile_lint

# ---- systemd unit ------------------------------------------------------------------
unit=packaging/systemd/lbd.service
verify_unit() { # unit-file lbd-binary
    local d=$tmp/unit-$RANDOM errs
    mkdir -p "$d"
    # systemd-analyze checks that ExecStart's binary exists: point it at ours.
    sed "s#/usr/bin/lbd#$2#g" "$1" >"$d/lbd.service"
    errs=$(systemd-analyze verify "$d/lbd.service" 2>&1)
    # verify exits 0 on many problems it only logs: any output is a finding.
    [[ -z $errs ]] || { echo "$errs"; return 1; }
}
unit_keys() {
    local want k missing=""
    want=("Type=notify" "ExecStartPre=/usr/bin/lbd check -c /etc/lbd/lbd.yaml"
          "ExecStart=/usr/bin/lbd run -c /etc/lbd/lbd.yaml" "ExecReload=/usr/bin/lbd reload -c /etc/lbd/lbd.yaml"
          "Restart=always" "NoNewPrivileges=yes" "ProtectSystem=strict" "ProtectHome=yes"
          "RuntimeDirectory=lbd" "RuntimeDirectoryMode=0700" "RuntimeDirectoryPreserve=restart"
          "OOMPolicy=continue" "LimitNOFILE=1048576"
          "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE"
          "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE")
    for k in "${want[@]}"; do grep -qxF -- "$k" "$unit" || missing+="missing: $k"$'\n'; done
    # Nothing may widen the capability set again.
    [[ $(grep -c '^\(AmbientCapabilities\|CapabilityBoundingSet\)=' "$unit") == 2 ]] || missing+="capabilities set more than once"$'\n'
    ! grep -q '^ProtectKernelTunables=yes' "$unit" || missing+="ProtectKernelTunables=yes blocks the proxy's /proc/sys/net writes"$'\n'
    [[ -z $missing ]] || { printf '%s' "$missing"; return 1; }
}
check "lbd.service has the required settings" unit_keys

# ---- packages ----------------------------------------------------------------------
if [[ $(id -u) != 0 ]]; then
    skip "packages" "not root (dpkg -i needs root; CI runs as root)"
    finish
fi
if [[ ${LBD_PKG_SKIP_BUILD:-0} != 1 ]]; then
    start=$(date +%s)
    if "$repo/scripts/package.sh" >"$tmp/package.log" 2>&1; then
        pass "scripts/package.sh built the packages in $(( $(date +%s) - start ))s"
    else
        fail "scripts/package.sh" "$(tail -n 30 "$tmp/package.log")"
        finish
    fi
fi
deb=$(ls -t "$out"/lbd_*.deb 2>/dev/null | head -n1)
rpm_file=$(ls -t "$out"/lbd-*.rpm 2>/dev/null | head -n1)
image=$(ls -t "$out"/lbd_*.oci.tar 2>/dev/null | head -n1)
[[ -n $deb ]] || { fail ".deb in $out"; finish; }
[[ -n $rpm_file ]] || { fail ".rpm in $out"; finish; }
[[ -n $image ]] || { fail "OCI image archive in $out"; finish; }

# -- the packaged binary: static, and small (20.9 MB before the dist profile)
mkdir -p "$tmp/pkgbin"
dpkg-deb -x "$deb" "$tmp/pkgbin"
pkgbin=$tmp/pkgbin/usr/bin/lbd
max_size=15000000
size=$(stat -c %s "$pkgbin")
if (( size <= max_size )); then
    pass "packaged /usr/bin/lbd is $size bytes (<= $max_size)"
else
    fail "packaged /usr/bin/lbd is $size bytes, over $max_size"
fi
if file "$pkgbin" | grep -Eq 'statically linked|static-pie linked'; then
    pass "packaged /usr/bin/lbd is static"
else
    fail "packaged /usr/bin/lbd is static" "$(file -b "$pkgbin")"
fi

# -- the OCI image archive, taken apart with nothing but tar, jq and sha256sum
image_name=$("$pkgbin" manifest -c "$repo/packaging/lbd.yaml" | sed -n 's/^ *image: *//p')
oci_blob() { echo "$tmp/oci/blobs/sha256/${1#sha256:}"; }
oci_desc() { # digest size what: the blob exists, with that size and digest
    local b
    b=$(oci_blob "$1")
    [[ -f $b ]] || { echo "$3: blob $1 missing"; return; }
    [[ $(stat -c %s "$b") == "$2" ]] || echo "$3: size $(stat -c %s "$b") != $2"
    [[ sha256:$(sha256sum "$b" | cut -d' ' -f1) == "$1" ]] || echo "$3: digest mismatch"
}
oci_structure() {
    local d=$tmp/oci errs="" m cfg layer f
    rm -rf "$d" && mkdir -p "$d" && tar -xf "$image" -C "$d"
    [[ $(jq -r .imageLayoutVersion "$d/oci-layout") == 1.0.0 ]] || errs+="oci-layout"$'\n'
    [[ $(jq -r .schemaVersion "$d/index.json") == 2 ]] || errs+="index schemaVersion"$'\n'
    [[ $(jq '.manifests | length' "$d/index.json") == 1 ]] || errs+="index: not one manifest"$'\n'
    [[ $(jq -r '.manifests[0].annotations["io.containerd.image.name"]' "$d/index.json") == "$image_name" ]] \
        || errs+="index: the image name is not lbd manifest's $image_name"$'\n'
    [[ $(jq -r '.manifests[0].annotations["org.opencontainers.image.ref.name"]' "$d/index.json") == "${image_name##*:}" ]] \
        || errs+="index: ref.name is not the tag"$'\n'
    m=$(jq -r '.manifests[0].digest' "$d/index.json")
    errs+=$(oci_desc "$m" "$(jq -r '.manifests[0].size' "$d/index.json")" manifest)
    m=$(oci_blob "$m")
    [[ $(jq -r .mediaType "$m") == application/vnd.oci.image.manifest.v1+json ]] || errs+="manifest mediaType"$'\n'
    cfg=$(jq -r .config.digest "$m")
    errs+=$(oci_desc "$cfg" "$(jq -r .config.size "$m")" config)
    [[ $(jq '.layers | length' "$m") == 1 ]] || errs+="manifest: not one layer"$'\n'
    layer=$(jq -r '.layers[0].digest' "$m")
    errs+=$(oci_desc "$layer" "$(jq -r '.layers[0].size' "$m")" layer)
    [[ $(jq -r '.layers[0].mediaType' "$m") == application/vnd.oci.image.layer.v1.tar+gzip ]] || errs+="layer mediaType"$'\n'
    cfg=$(oci_blob "$cfg")
    layer=$(oci_blob "$layer")
    [[ $(jq -r '.rootfs.diff_ids[0]' "$cfg") == "sha256:$(gzip -dc "$layer" | sha256sum | cut -d' ' -f1)" ]] \
        || errs+="config: diff_id is not the uncompressed layer's digest"$'\n'
    [[ $(uname -m) != x86_64 || $(jq -r '.os + "/" + .architecture' "$cfg") == linux/amd64 ]] || errs+="config: os/arch"$'\n'
    [[ $(jq -c .config.Entrypoint "$cfg") == '["/usr/bin/lbd"]' ]] || errs+="config: Entrypoint"$'\n'
    [[ $(jq -r .config.User "$cfg") == 0:0 ]] || errs+="config: User"$'\n'
    mkdir -p "$d/rootfs"
    tar -xzf "$layer" -C "$d/rootfs"
    cmp -s "$d/rootfs/usr/bin/lbd" "$pkgbin" || errs+="layer: usr/bin/lbd is not the packaged binary"$'\n'
    [[ $(tar -tvzf "$layer" usr/bin/lbd | awk '{print $1, $2}') == "-rwxr-xr-x 0/0" ]] \
        || errs+="layer: usr/bin/lbd is not 0755 root"$'\n'
    # docker load and podman load read manifest.json.
    [[ $(jq -r '.[0].RepoTags[0]' "$d/manifest.json") == "$image_name" ]] || errs+="manifest.json: RepoTags"$'\n'
    for f in $(jq -r '.[0].Config, .[0].Layers[]' "$d/manifest.json"); do
        [[ -f $d/$f ]] || errs+="manifest.json: $f missing"$'\n'
    done
    [[ -z $errs ]] || { printf '%s\n' "$errs"; return 1; }
}
check "OCI archive: layout, index, manifest, config and layer digests, the binary inside" oci_structure
# The layer's nft, with only its own files: the proxy programs its table
# through it (nft -j -f /proc/self/fd/0). In a chroot of the unpacked layer
# with /proc mounted (no /dev), in a throwaway network and mount namespace
# (unshare: nothing to clean up on this host).
oci_nft() {
    local r=$tmp/oci/rootfs doc='{"nftables":[{"add":{"table":{"family":"inet","name":"lbd_pkgtest"}}}]}'
    [[ -f $r/usr/sbin/nft && $(stat -c %a "$r/usr/sbin/nft") == 755 ]] \
        || { echo "layer: usr/sbin/nft missing or not 0755"; return 1; }
    [[ ! -e $r/dev/stdin ]] || { echo "layer: has /dev/stdin, so the check proves nothing"; return 1; }
    mkdir -p "$r/proc"
    # shellcheck disable=SC2016
    printf '%s' "$doc" | unshare --mount --net --fork sh -c '
        mount -t proc proc "$1/proc" || exit 1
        chroot "$1" /usr/sbin/nft -j -f /proc/self/fd/0 || exit 1
        chroot "$1" /usr/sbin/nft -j list table inet lbd_pkgtest </dev/null' sh "$r" >"$tmp/nft.out" 2>&1 \
        || { cat "$tmp/nft.out"; return 1; }
    grep -q '"name": *"lbd_pkgtest"' "$tmp/nft.out" || { cat "$tmp/nft.out"; return 1; }
}
if [[ $(id -u) == 0 ]] && command -v unshare >/dev/null; then
    check "OCI archive: its nft applies a table in a chroot of the layer (no /dev/stdin)" oci_nft
else
    skip "OCI archive: its nft in a chroot of the layer" "needs root and unshare"
fi
oci_reproducible() {
    "$repo/scripts/oci-image.sh" "$pkgbin" "$image_name" "$tmp/again.oci.tar" 2>/dev/null
    cmp "$image" "$tmp/again.oci.tar"
}
check "OCI archive: the same binary gives the same bytes" oci_reproducible

lbd_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
# podman, rootful, in a private store. Where the sandbox lacks
# CAP_SYS_RESOURCE, podman's default rlimits cannot be set: lower ones are
# tried next.
if command -v podman >/dev/null; then
    pod() {
        podman --root "$tmp/podman/root" --runroot "$tmp/podman/run" --tmpdir "$tmp/podman/tmp" \
            --storage-driver vfs --cgroup-manager cgroupfs --events-backend file "$@"
    }
    mkdir -p "$tmp/podman/tmp"
    check "podman load -i the archive" pod load -i "$image"
    podman_named() { pod images --format '{{.Repository}}:{{.Tag}}' | grep -qx "$image_name"; }
    check "podman: the image is $image_name" podman_named
    podman_run() {
        local o
        o=$(pod run --rm --network none "$image_name" version 2>&1) \
            || o=$(pod run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
                   "$image_name" version 2>&1) \
            || { echo "$o"; return 1; }
        grep -q "^lbd $lbd_version " <<<"$o" || { echo "$o"; return 1; }
    }
    # This sandbox's cgroups (hybrid v1/v2) and missing CAP_SYS_RESOURCE stop
    # crun and runc before the image runs: that is the host, not the image
    # (ctr run below runs the same archive); said as a skip.
    if out=$(podman_run 2>&1); then
        pass "podman run --rm $image_name version"
    elif grep -Eq 'cgroups in hybrid mode|setrlimit|error setting rlimit' <<<"$out"; then
        skip "podman run --rm $image_name version" "the host's container runtime cannot start any container here: $(tail -n1 <<<"$out")"
    else
        fail "podman run --rm $image_name version" "$out"
    fi
else
    skip "podman load/run" "podman not installed (scripts/install-deps.sh installs it)"
fi

# containerd, the kubelet's runtime: a private instance, the k8s.io
# namespace the kubelet reads, then the image run by ctr.
if command -v containerd >/dev/null && command -v ctr >/dev/null; then
    cdir=$tmp/containerd
    mkdir -p "$cdir"
    {
        echo 'version = 2'
        echo "root = \"$cdir/root\""
        echo "state = \"$cdir/state\""
        echo 'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]'
        echo '[grpc]'
        echo "  address = \"$cdir/containerd.sock\""
        echo '[ttrpc]'
        echo "  address = \"$cdir/containerd.sock.ttrpc\""
    } >"$cdir/config.toml"
    containerd --config "$cdir/config.toml" >"$cdir/log" 2>&1 &
    containerd_pid=$!
    for _ in $(seq 100); do [[ -S $cdir/containerd.sock ]] && break; sleep 0.1; done
    ctr_() { ctr --address "$cdir/containerd.sock" -n k8s.io "$@"; }
    check "ctr -n k8s.io images import the archive" ctr_ images import --snapshotter native "$image"
    ctr_named() { ctr_ images ls -q | grep -qx "$image_name"; }
    check "ctr: the image is $image_name" ctr_named
    ctr_run() {
        local o
        o=$(ctr_ run --rm --snapshotter native --net-host "$image_name" "lbd-pkgtest-$$" /usr/bin/lbd version 2>&1) \
            || { echo "$o"; return 1; }
        grep -q "^lbd $lbd_version " <<<"$o" || { echo "$o"; return 1; }
    }
    check "ctr run $image_name lbd version" ctr_run
else
    skip "containerd import" "containerd not installed (scripts/install-deps.sh installs it)"
fi

# ExecReload, run as systemd would with the packaged binary on a broken
# file: it must fail, naming the line, before any daemon is asked.
exec_reload_fails_on_a_bad_file() {
    local cmd out
    printf 'node:\n  name: cp1\ntcplb:\n  listeners:\n    - name: x\n      bind: nonsense\n' >"$tmp/bad.yaml"
    cmd=$(sed -n 's/^ExecReload=//p' "$unit" | sed "s#/usr/bin/lbd#$pkgbin#; s#/etc/lbd/lbd.yaml#$tmp/bad.yaml#")
    if out=$($cmd 2>&1); then echo "exit 0: $out"; return 1; fi
    grep -q "^$tmp/bad.yaml:6:" <<<"$out" || { echo "$out"; return 1; }
    grep -q "not reloaded" <<<"$out" || { echo "$out"; return 1; }
}
check "lbd.service ExecReload fails on an invalid file, at its line" exec_reload_fails_on_a_bad_file

# The unit, verified with the packaged binary standing in for /usr/bin/lbd.
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$tmp/x"
    dpkg-deb -x "$deb" "$tmp/x"
    check "systemd-analyze verify lbd.service" verify_unit "$unit" "$tmp/x/usr/bin/lbd"
    # The hardening stays: exposure at most 3.0 of 10 (2.8 when written).
    sed "s#/usr/bin/lbd#$tmp/x/usr/bin/lbd#g" "$unit" >"$tmp/x/lbd.service"
    check "systemd-analyze security: exposure <= 3.0" \
        systemd-analyze security --offline=true --threshold=30 "$tmp/x/lbd.service"
else
    skip "systemd-analyze verify" "systemd-analyze not installed (apt-get install systemd)"
fi

# -- .deb: contents and control data
contents=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#')
for f in /usr/bin/lbd /usr/lib/systemd/system/lbd.service /etc/lbd/lbd.yaml \
         /usr/share/doc/lbd/examples/static-pod.yaml /usr/share/doc/lbd/install.md; do
    if has_line "$contents" "$f"; then pass ".deb contains $f"; else fail ".deb contains $f" "$contents"; fi
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles 2>/dev/null)
if has_line "$conffiles" /etc/lbd/lbd.yaml; then pass ".deb conffiles: /etc/lbd/lbd.yaml"; else fail ".deb conffiles" "$conffiles"; fi
ctrl=$(dpkg-deb --ctrl-tarfile "$deb" | tar -tf -)
for s in postinst prerm postrm; do
    if has_line "$ctrl" "./$s"; then pass ".deb has $s"; else fail ".deb has $s" "$ctrl"; fi
done
depends=$(dpkg-deb -f "$deb" Depends)
if [[ -z $depends ]]; then pass ".deb depends on nothing (static binary)"; else fail ".deb Depends" "$depends"; fi

# -- .deb: install, keep a changed conffile on reinstall, remove, purge
if dpkg -s lbd >/dev/null 2>&1; then
    skip ".deb install/purge" "an lbd package is already installed on this machine; not touching it"
else
    deb_installed_by_us=1
    check "dpkg -i" dpkg -i "$deb"
    check "installed /usr/bin/lbd runs" /usr/bin/lbd version
    check "installed lbd: the installed default config passes lbd check" /usr/bin/lbd check -c /etc/lbd/lbd.yaml
    if command -v systemd-analyze >/dev/null; then
        check "systemd-analyze verify the installed unit" verify_unit /usr/lib/systemd/system/lbd.service /usr/bin/lbd
    fi
    echo "# local change" >>/etc/lbd/lbd.yaml
    check "dpkg -i again (upgrade path)" dpkg -i --force-confold "$deb"
    check "a changed conffile survives reinstall" grep -qx "# local change" /etc/lbd/lbd.yaml
    check "dpkg -r" dpkg -r lbd
    gone() { for f in "$@"; do [[ ! -e $f ]] || { echo "$f still there"; return 1; }; done; }
    check "dpkg -r removed the binary and the unit" gone /usr/bin/lbd /usr/lib/systemd/system/lbd.service
    check "dpkg -r kept the conffile" test -f /etc/lbd/lbd.yaml
    check "dpkg -P" dpkg -P lbd
    check "dpkg -P removed /etc/lbd" gone /etc/lbd/lbd.yaml /etc/lbd
    if dpkg -s lbd >/dev/null 2>&1; then fail "package gone from dpkg's database"; else pass "package gone from dpkg's database"; fi
    deb_installed_by_us=0
fi

# -- an older userland: Debian 11 (glibc 2.31, dpkg 1.20) in a chroot made
# once per machine by scripts/old-userland.sh (debootstrap, ~2 min, cached)
in_root() { # ROOT CMD...: CMD in ROOT with its own /proc and a clean environment
    unshare --mount --propagation private -- sh -c \
        'r=$1; shift; mount -t proc proc "$r/proc" && exec chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C "$@"' \
        sh "$@"
}
same_as_host() { # NAME ROOT ARGS...: the installed lbd in ROOT gives the same output and status as here
    local name=$1 r=$2 want got wrc grc
    shift 2
    want=$("$tmp/x/usr/bin/lbd" "$@" 2>&1); wrc=$?
    got=$(in_root "$r" /usr/bin/lbd "$@" 2>&1); grc=$?
    if [[ $got == "$want" && $grc == "$wrc" ]]; then
        pass "$name"
    else
        fail "$name" "here (exit $wrc): $want"$'\n'"bullseye (exit $grc): $got"
    fi
    printf '%s' "$got" >"$tmp/last-old-output"
}
old_userland_checks() {
    local r start made
    start=$(date +%s)
    if ! command -v debootstrap >/dev/null; then
        skip "bullseye userland" "debootstrap not installed (scripts/install-deps.sh)"
        return
    fi
    if ! r=$("$repo/scripts/old-userland.sh" bullseye 2>"$tmp/rootfs.log"); then
        fail "bullseye root file system (scripts/old-userland.sh)" "$(tail -n 20 "$tmp/rootfs.log")"
        return
    fi
    made=$(cat "$r/.lbd-complete")
    pass "bullseye root in $r ($made; ready in $(( $(date +%s) - start ))s)"
    if [[ $(cat "$r/etc/debian_version") == 11.* ]]; then
        pass "the chroot is Debian 11 ($(cat "$r/etc/debian_version"), $(in_root "$r" ldd --version | head -n1))"
    else
        fail "the chroot is Debian 11" "$(cat "$r/etc/debian_version")"
    fi
    # The point of the chroot: a binary linked against this host's glibc
    # (2.36: GLIBC_2.34 symbols) does not run there.
    cp /usr/bin/true "$r/tmp/host-true"
    local out
    out=$(in_root "$r" /tmp/host-true 2>&1)
    if [[ $? != 0 && $out == *"GLIBC_2.3"*"not found"* ]]; then
        pass "bullseye: this host's dynamically linked /usr/bin/true does not run there (older glibc)"
    else
        fail "bullseye: this host's /usr/bin/true must not run there" "$out"
    fi
    rm -f "$r/tmp/host-true"
    [[ -d $tmp/x/usr/bin ]] || dpkg-deb -x "$deb" "$tmp/x"
    cp "$deb" "$r/tmp/lbd.deb"
    check "bullseye: dpkg -i the .deb" in_root "$r" dpkg -i /tmp/lbd.deb
    rm -f "$r/tmp/lbd.deb"
    same_as_host "bullseye: lbd version as on this host" "$r" version
    if grep -Eq "^lbd $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)\b" "$tmp/last-old-output"; then
        pass "bullseye: lbd version names the crate version"
    else
        fail "bullseye: lbd version names the crate version" "$(cat "$tmp/last-old-output")"
    fi
    # The packaged config at one path that exists both here and there.
    mkdir -p "$r$tmp"
    cp "$tmp/x/etc/lbd/lbd.yaml" "$tmp/lbd.yaml"
    cp "$tmp/x/etc/lbd/lbd.yaml" "$r$tmp/lbd.yaml"
    same_as_host "bullseye: lbd check -c the packaged config, as on this host" "$r" \
        check -c "$tmp/lbd.yaml"
    if in_root "$r" /usr/bin/lbd check -c /etc/lbd/lbd.yaml >"$tmp/old-check" 2>&1; then
        pass "bullseye: lbd check -c /etc/lbd/lbd.yaml (installed) exits 0"
    else
        fail "bullseye: lbd check -c /etc/lbd/lbd.yaml exits 0" "$(cat "$tmp/old-check")"
    fi
    printf 'vrrp:\n  instances:\n    - name: vip\n      vrid: 300\n' >"$r/tmp/bad.yaml"
    local rc
    out=$(in_root "$r" /usr/bin/lbd check -c /tmp/bad.yaml 2>&1); rc=$?
    rm -f "$r/tmp/bad.yaml"
    if [[ $rc == 1 ]] && grep -Eq '^/tmp/bad.yaml:[0-9]+:[0-9]+: ' <<<"$out"; then
        pass "bullseye: lbd check on a bad config: exit 1, PATH:LINE:COL messages"
    else
        fail "bullseye: lbd check on a bad config" "exit $rc: $out"
    fi
    same_as_host "bullseye: lbd manifest -c the packaged config, as on this host" "$r" \
        manifest -c "$tmp/lbd.yaml"
    rm -rf "${r:?}$tmp"
    if grep -q '^kind: Pod' "$tmp/last-old-output"; then
        pass "bullseye: lbd manifest prints a Pod"
    else
        fail "bullseye: lbd manifest prints a Pod" "$(head -n 20 "$tmp/last-old-output")"
    fi
    check "bullseye: dpkg -P lbd" in_root "$r" dpkg -P lbd
    check "bullseye: purged: no /usr/bin/lbd, no /etc/lbd" test ! -e "$r/usr/bin/lbd" -a ! -e "$r/etc/lbd"
}
old_userland_checks

# -- .rpm: metadata, then install and erase in a throwaway root
if ! command -v rpm >/dev/null; then
    skip ".rpm checks" "rpm not installed (apt-get install rpm)"
    finish
fi
list=$(rpm -qp --list "$rpm_file" 2>/dev/null)
for f in /usr/bin/lbd /usr/lib/systemd/system/lbd.service /etc/lbd/lbd.yaml \
         /usr/share/doc/lbd/examples/static-pod.yaml; do
    if has_line "$list" "$f"; then pass ".rpm contains $f"; else fail ".rpm contains $f" "$list"; fi
done
cfg=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$rpm_file" 2>/dev/null | grep '^/etc/lbd/lbd.yaml ')
# c: %config, n: noreplace
if [[ $cfg == "/etc/lbd/lbd.yaml "*c*n* || $cfg == "/etc/lbd/lbd.yaml "*n*c* ]]; then
    pass ".rpm: /etc/lbd/lbd.yaml is %config(noreplace)"
else
    fail ".rpm: /etc/lbd/lbd.yaml is %config(noreplace)" "$cfg"
fi
if has_line "$(rpm -qp --configfiles "$rpm_file" 2>/dev/null)" /etc/lbd/lbd.yaml; then
    pass ".rpm --configfiles"
else
    fail ".rpm --configfiles" "$(rpm -qp --configfiles "$rpm_file" 2>&1)"
fi
scripts=$(rpm -qp --scripts "$rpm_file" 2>/dev/null)
rpm_scripts_ok() {
    local errs=""
    for s in "postinstall scriptlet" "preuninstall scriptlet" "postuninstall scriptlet"; do
        grep -q "^$s" <<<"$scripts" || errs+="no $s"$'\n'
    done
    grep -q 'systemctl daemon-reload' <<<"$scripts" || errs+="no daemon-reload"$'\n'
    grep -q 'systemctl --no-reload disable lbd.service' <<<"$scripts" || errs+="no disable on erase"$'\n'
    # Installing must not enable or start the service.
    ! grep -v '^ *#' <<<"$scripts" | grep -Eq 'systemctl (enable|start|preset)' || errs+="the scriptlets enable or start lbd"$'\n'
    [[ -z $errs ]] || { printf '%s%s\n' "$errs" "$scripts"; return 1; }
}
check ".rpm scriptlets: daemon-reload, disable on erase, never enable" rpm_scripts_ok
# rpmlib(...) and config(lbd) are rpm's own bookkeeping.
requires=$(rpm -qp --requires "$rpm_file" 2>/dev/null | grep -Ev '^(rpmlib|config)\(' | sort -u)
if [[ $requires == "/bin/sh" ]]; then pass ".rpm requires only /bin/sh"; else fail ".rpm requires" "$requires"; fi

root=$tmp/rpmroot
mkdir -p "$root"
rpm --root "$root" --initdb >/dev/null 2>&1
# --noscripts: the throwaway root has no shell to run them in; their
# content is checked above.
check "rpm -i into a throwaway root" rpm --root "$root" -i --nodeps --noscripts "$rpm_file"
check "rpm-installed /usr/bin/lbd runs" "$root/usr/bin/lbd" version
check "rpm -V: installed files match" rpm --root "$root" -V --nodeps lbd
check "rpm -e" rpm --root "$root" -e --noscripts lbd
check "rpm -e removed the files" test ! -e "$root/usr/bin/lbd" -a ! -e "$root/usr/lib/systemd/system/lbd.service"

finish
