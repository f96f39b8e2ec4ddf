#!/usr/bin/env bash
# Writes an OCI image archive holding one static binary, without a container
# engine: the layer tar, the config and manifest JSON and the index, each
# addressed by its sha256, in an OCI image layout, tarred up.
#
#   scripts/oci-image.sh BINARY IMAGE-NAME OUT.tar [ARCH]
#   scripts/oci-image.sh target/x86_64-unknown-linux-musl/dist/lbd localhost/lbd:v0.1.0 lbd-image.tar
#
# The archive loads with `ctr -n k8s.io images import OUT.tar` (containerd,
# the kubelet's runtime: the name comes from io.containerd.image.name),
# `podman load -i OUT.tar` and `docker load -i OUT.tar` (both read the
# docker-style manifest.json beside the OCI layout). The image: /usr/bin/lbd,
# entrypoint lbd, `run -c /etc/lbd/lbd.yaml`, user 0 (the pod grants it
# NET_ADMIN, NET_RAW and NET_BIND_SERVICE only).
#
# And /usr/sbin/nft with the shared libraries and loader it links to, taken
# from this host (Debian's nftables package): the proxy programs its
# masquerade and filter table through `nft -j -f -`, so an image without it
# would program IPVS but blackhole what needs masquerading. NFT=none leaves
# it out (an image for VRRP and tcplb only); NFT=PATH takes another nft.
#
# Reproducible: the same binary, nft files, name and SOURCE_DATE_EPOCH
# (default: the last commit's time) give the same bytes. Needs bash, GNU
# tar, gzip, sha256sum, stat, and ldd when nft is included.
set -euo pipefail

bin=${1:?usage: oci-image.sh BINARY IMAGE-NAME OUT.tar [ARCH]}
name=${2:?image name, e.g. localhost/lbd:v0.1.0}
out=${3:?output archive}
arch=${4:-$(uname -m)}
case $arch in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "oci-image: unknown architecture $arch" >&2; exit 2 ;;
esac
[[ $name == *:* ]] || { echo "oci-image: $name has no tag" >&2; exit 2; }
tag=${name##*:}
repo=$(cd "$(dirname "$0")/.." && pwd)
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
version=${tag#v}

work=$(mktemp -d /tmp/lbd-oci.XXXXXX)
trap 'rm -rf "$work"' EXIT
blobs=$work/layout/blobs/sha256
mkdir -p "$work/rootfs/usr/bin" "$work/rootfs/etc/lbd" "$work/rootfs/run/lbd" "$blobs"
install -m 0755 "$bin" "$work/rootfs/usr/bin/lbd"

# nft and what it loads, each file at the path the loader looks for it
# (copied with -L: the image has no symlinks to resolve).
nft=${NFT:-/usr/sbin/nft}
dirs=(usr etc run)
history="scripts/oci-image.sh: /usr/bin/lbd"
if [[ $nft != none ]]; then
    [[ -x $nft ]] || { echo "oci-image: $nft not found (apt-get install nftables, or NFT=none)" >&2; exit 2; }
    mkdir -p "$work/rootfs/usr/sbin"
    install -m 0755 "$nft" "$work/rootfs/usr/sbin/nft"
    libs=$(ldd "$nft" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
    [[ -n $libs ]] || { echo "oci-image: ldd found no libraries for $nft" >&2; exit 2; }
    for l in $libs; do
        mkdir -p "$work/rootfs$(dirname "$l")"
        cp -L "$l" "$work/rootfs$l"
        chmod 0755 "$work/rootfs$l"  # the loader is opened for exec
        top=${l#/}
        top=${top%%/*}
        [[ " ${dirs[*]} " == *" $top "* ]] || dirs+=("$top")
    done
    history+=", /usr/sbin/nft $("$nft" --version 2>/dev/null | head -n1 | tr -d '"')"
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# Moves FILE into the blob store under its digest; prints the digest.
blob() {
    local d
    d=$(sha "$1")
    mv "$1" "$blobs/$d"
    echo "$d"
}

# The layer: fixed owners, modes and times, sorted, so the digest only
# depends on the binary.
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$work/rootfs" -cf "$work/layer.tar" "${dirs[@]}"
diff_id=$(sha "$work/layer.tar")
gzip -9n "$work/layer.tar"
layer_size=$(size "$work/layer.tar.gz")
layer=$(blob "$work/layer.tar.gz")

cat >"$work/config.json" <<EOF
{"architecture":"$arch","os":"linux","created":"$created","config":{"User":"0:0","Env":["PATH=/usr/bin:/usr/sbin:/bin:/sbin"],"Entrypoint":["/usr/bin/lbd"],"Cmd":["run","-c","/etc/lbd/lbd.yaml"],"Labels":{"org.opencontainers.image.title":"lbd","org.opencontainers.image.version":"$version"}},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created":"$created","created_by":"$history"}]}
EOF
config_size=$(size "$work/config.json")
config=$(blob "$work/config.json")

cat >"$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer","size":$layer_size}],"annotations":{"org.opencontainers.image.created":"$created","org.opencontainers.image.version":"$version"}}
EOF
manifest_size=$(size "$work/manifest.json")
manifest=$(blob "$work/manifest.json")

printf '{"imageLayoutVersion":"1.0.0"}\n' >"$work/layout/oci-layout"
cat >"$work/layout/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"$tag"}}]}
EOF
# docker load and podman load read this one (as `docker save` writes it).
cat >"$work/layout/manifest.json" <<EOF
[{"Config":"blobs/sha256/$config","RepoTags":["$name"],"Layers":["blobs/sha256/$layer"]}]
EOF

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$work/layout" -cf "$out" oci-layout index.json manifest.json blobs
echo "$out: $name (manifest sha256:$manifest, layer $layer_size bytes)" >&2
