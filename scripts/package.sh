#!/usr/bin/env bash
# Builds lbd's .deb and .rpm and an OCI image archive from one static musl
# binary, into target/packages/.
#
#   scripts/package.sh            # the packages and the image archive
#   LBD_PKG_TARGET=x86_64-unknown-linux-gnu scripts/package.sh   # another target
#
# The binary is built with the `dist` profile (fat LTO, one codegen unit,
# panic=abort from release) and stripped (20.9 MB before that profile).
# Its size in bytes is printed below, beside the 15 MB bound that
# tests/packaging.sh holds it to (docs/install.md).
# The image archive (lbd_<version>_<arch>.oci.tar) is written without a
# container engine (scripts/oci-image.sh) and tagged localhost/lbd:v<version>,
# the image `lbd manifest` names by default:
#     ctr -n k8s.io images import target/packages/lbd_0.1.0_amd64.oci.tar
#     podman load -i target/packages/lbd_0.1.0_amd64.oci.tar
#
# Installs cargo-deb and cargo-generate-rpm (pinned, `cargo install --locked`)
# when they are missing: about 2 and 6 minutes on a small machine, once per
# machine. Needs: cargo, rustup (for the musl target), strip (binutils),
# a C compiler (ring); musl-tools is used when present.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

arch=$(uname -m)
target=${LBD_PKG_TARGET:-$arch-unknown-linux-musl}
out=${LBD_PKG_OUT:-$repo/target/packages}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
export CARGO_TARGET_DIR=$target_dir

say() { printf '==> %s\n' "$*" >&2; }

# 1. The target: musl gives one static binary for Debian and RHEL alike.
if [[ $target == *-musl ]] && ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    say "adding the Rust target $target"
    if ! rustup target add "$target" >&2; then
        fallback=$arch-unknown-linux-gnu
        say "WARNING: cannot add $target (no rustup or no download); building $fallback instead."
        say "WARNING: that binary links glibc dynamically: the packages then need a glibc at least as new as this machine's."
        target=$fallback
    fi
fi
if [[ $target == *-musl ]]; then
    if command -v musl-gcc >/dev/null 2>&1; then
        # ring's C and assembly, compiled against musl's headers.
        cc_var="CC_${target//-/_}"
        export "$cc_var=${!cc_var:-musl-gcc}"
    else
        say "WARNING: musl-gcc not found (apt-get install musl-tools); ring may not build for $target"
    fi
fi

# 2. The packaging tools, only when missing (CI machines keep them).
ensure_tool() { # subcommand crate version
    local have
    have=$(cargo "$1" --version 2>/dev/null || true)
    if [[ $have != *"$3"* ]]; then
        say "installing $2 $3 (cargo install --locked; a few minutes, once)"
        cargo install --locked --version "=$3" "$2" >&2
    fi
}
ensure_tool deb cargo-deb "$CARGO_DEB_VERSION"
ensure_tool generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

# 3. The binary.
profile=dist
say "building lbd for $target (profile $profile)"
cargo build --profile "$profile" --locked --target "$target" --bin lbd >&2
bin=$target_dir/$target/$profile/lbd
# Debug info and symbols out: a panic aborts (after logging its message
# and source location, which are in the binary), so no backtrace needs
# function names; 3.7 MB less.
strip "$bin"
if [[ $target == *-musl ]]; then
    if ! file "$bin" | grep -Eq 'statically linked|static-pie linked'; then
        say "ERROR: $bin is not static: $(file -b "$bin")"
        exit 1
    fi
fi

size=$(stat -c %s "$bin")
# The bound is tests/packaging.sh's max_size; said here so a build shows
# how close it comes.
say "lbd: $size bytes ($(( size / 1000 )) kB; tests/packaging.sh allows 15000000)"

# 4. The packages.
mkdir -p "$out"
say "building the .deb"
cargo deb --no-build --no-strip --profile "$profile" --target "$target" --output "$out" >&2
say "building the .rpm"
cargo generate-rpm --profile "$profile" --target "$target" --output "$out" >&2

# 5. The image archive, named as `lbd manifest` names the image.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(uname -m)
[[ $target == aarch64-* ]] && arch=arm64
[[ $target == x86_64-* ]] && arch=amd64
say "writing the OCI image archive"
"$repo/scripts/oci-image.sh" "$bin" "localhost/lbd:v$version" "$out/lbd_${version}_${arch}.oci.tar" "$arch"

say "packages in $out:"
ls -1 "$out"/*.deb "$out"/*.rpm "$out"/*.oci.tar
