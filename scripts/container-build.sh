#!/usr/bin/env bash
# Builds the container image (deploy/Containerfile) from a fresh clone of this repository's
# HEAD, as a release pipeline would, then checks the image: every binary starts and prints
# its help, the image runs as UID 65532, and the binaries are stripped.
#
#   scripts/container-build.sh                 # base images from their registries
#   scripts/container-build.sh --local-base    # base images made here from Debian packages
#   IMAGE=kube-authd:0.1.0 scripts/container-build.sh
#
# --local-base is for machines that reach Debian's package archive and crates.io but not
# docker.io or gcr.io: it builds stand-ins for both base images with debootstrap (bookworm)
# — a build image with Debian's rustc-web/cargo-web (Rust 1.96) and gcc, and a runtime
# image with glibc and CA certificates only — and passes them as BUILD_IMAGE/RUNTIME_IMAGE.
#
# Needs buildah (apt-get install buildah; and debootstrap for --local-base), run as root.
# Honours buildah's STORAGE_DRIVER (e.g. vfs where overlay mounts are refused) and
# BUILDAH_ISOLATION (default here: chroot, which needs no user namespaces). The release
# build runs under `nice -n 10`: on a shared two-core machine it took 98 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
local_base=false
for arg in "$@"; do
  case $arg in
    --local-base) local_base=true ;;
    *) echo "usage: $0 [--local-base]" >&2; exit 2 ;;
  esac
done
image=${IMAGE:-localhost/kube-authd:dev}
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
command -v buildah >/dev/null || { echo "$0: needs buildah (apt-get install buildah)" >&2; exit 1; }

work=$(mktemp -d)
containers=()
cleanup() {
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A fresh clone: only what is committed goes in, and .dockerignore filters that.
git clone --quiet --no-hardlinks "$repo" "$work/src"
git -C "$work/src" checkout --quiet "$(git -C "$repo" rev-parse HEAD)"

build_args=()
if $local_base; then
  build_args=(--build-arg BUILD_IMAGE=localhost/kube-authd-build:bookworm
              --build-arg RUNTIME_IMAGE=localhost/kube-authd-base:bookworm)
  if buildah inspect --type image localhost/kube-authd-build:bookworm >/dev/null 2>&1 &&
     buildah inspect --type image localhost/kube-authd-base:bookworm >/dev/null 2>&1; then
    echo "== base images: localhost/kube-authd-{base,build}:bookworm (already built; buildah rmi them to rebuild)"
  else
    command -v debootstrap >/dev/null || { echo "$0: --local-base needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    echo "== base images from Debian packages (debootstrap bookworm, $mirror)"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
      { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    c=$(buildah from scratch); containers+=("$c")
    cp -a "$work/rootfs/." "$(buildah mount "$c")/"
    buildah umount "$c" >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
    buildah commit --quiet "$c" localhost/kube-authd-base:bookworm >/dev/null
    # The build image: Debian's newest Rust for bookworm (rustc-web, from bookworm-security).
    # It trusts the CAs this host added locally (/usr/local/share/ca-certificates), so cargo
    # reaches crates.io through a TLS-inspecting proxy the host trusts.
    mkdir -p "$work/build-image/extra-ca"
    cp /usr/local/share/ca-certificates/*.crt "$work/build-image/extra-ca/" 2>/dev/null || true
    cat >"$work/build-image/Containerfile" <<'EOF'
FROM localhost/kube-authd-base:bookworm
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null \
 && echo 'deb http://deb.debian.org/debian-security bookworm-security main' \
      > /etc/apt/sources.list.d/security.list \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      rustc-web cargo-web gcc libc6-dev git \
 && rm -rf /var/lib/apt/lists/*
EOF
    buildah bud --quiet -t localhost/kube-authd-build:bookworm "$work/build-image" >/dev/null
  fi
fi

echo "== buildah bud -f deploy/Containerfile -t $image (fresh clone of $(git -C "$repo" rev-parse --short HEAD))"
started=$SECONDS
nice -n 10 buildah bud "${build_args[@]}" -f deploy/Containerfile -t "$image" "$work/src"
echo "== built in $((SECONDS - started)) s"

c=$(buildah from "$image"); containers+=("$c")
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$image")
[[ $user == 65532:65532 ]] || { echo "$0: image user is '$user', expected 65532:65532" >&2; exit 1; }
for bin in authd authd-edge kube-authd; do
  out=$(buildah run --user 65532:65532 "$c" -- "/usr/local/bin/$bin" --help)
  grep -q '^Usage:' <<<"$out" || { echo "$0: $bin --help printed no usage:" >&2; echo "$out" >&2; exit 1; }
  echo "ok   $bin --help: $(head -1 <<<"$out")"
done
mnt=$(buildah mount "$c")
for bin in authd authd-edge kube-authd; do
  f=$mnt/usr/local/bin/$bin
  if readelf -S "$f" | grep -qE '\.(symtab|debug_info)'; then
    echo "$0: $bin is not stripped" >&2; exit 1
  fi
  echo "ok   $bin stripped, $(( $(stat -c %s "$f") / 1024 / 1024 )) MiB"
done
buildah umount "$c" >/dev/null
echo "image $image: $(buildah images --format '{{.Size}}' "$image")"
