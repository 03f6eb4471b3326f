#!/usr/bin/env bash
# Base image for the scoring image when no public registry is reachable: Debian bookworm (minbase) with python3,
# built by mmdebstrap from the Debian mirror apt already uses, and imported into buildah's storage as
#   localhost/edge-python-base:bookworm
# The root filesystem tarball is cached (~30 s to build, ~170 MB), so a new buildah storage imports it in seconds.
#
#   scripts/build_base_image.sh            # storage: EDGE_BUILDAH_ROOT / EDGE_BUILDAH_RUNROOT (default .edge-stack/buildah)
#   scripts/build_base_image.sh --rebuild  # build the tarball again (e.g. for security updates)
#
# Settings (environment): EDGE_IMAGE_BASE (image name), EDGE_BASE_IMAGE_CACHE (tarball folder, default
# .edge-stack/cache/base), EDGE_BASE_IMAGE_SUITE (bookworm), EDGE_BASE_IMAGE_MIRROR (default: apt's own sources).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
state="$repo/.edge-stack"
root="${EDGE_BUILDAH_ROOT:-$state/buildah/root}"
runroot="${EDGE_BUILDAH_RUNROOT:-$state/buildah/run}"
image="${EDGE_IMAGE_BASE:-localhost/edge-python-base:bookworm}"
cache="${EDGE_BASE_IMAGE_CACHE:-$state/cache/base}"
suite="${EDGE_BASE_IMAGE_SUITE:-bookworm}"
tarball="$cache/$suite-python3.tar"
buildah=(buildah --root "$root" --runroot "$runroot" --storage-driver vfs)

for tool in buildah mmdebstrap; do
  command -v "$tool" > /dev/null || { echo "build_base_image: $tool not found; install it: apt-get install $tool" >&2; exit 1; }
done
mkdir -p "$cache" "$root" "$runroot"
# Tests and the demo may prepare the base at the same time; one at a time per cache folder.
exec 9> "$cache/.lock"
flock 9

if [ "${1:-}" = "--rebuild" ]; then
  rm -f "$tarball"
  "${buildah[@]}" rmi "$image" > /dev/null 2>&1 || true
fi
if "${buildah[@]}" inspect --type image "$image" > /dev/null 2>&1; then
  echo "base image $image is in $root"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  echo "== mmdebstrap: Debian $suite + python3 -> $tarball"
  start=$SECONDS
  # No docs, man pages or translations: nobody reads them in a scoring image.
  # --format: the .partial suffix would otherwise make mmdebstrap write a directory, not a tarball.
  mmdebstrap --quiet --format=tar --variant=minbase --include=python3 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    "$suite" "$tarball.partial" ${EDGE_BASE_IMAGE_MIRROR:+"$EDGE_BASE_IMAGE_MIRROR"}
  mv "$tarball.partial" "$tarball"
  echo "   built in $((SECONDS - start)) s ($(du -h "$tarball" | cut -f1))"
fi

echo "== importing $tarball as $image"
container=$("${buildah[@]}" from scratch)
trap '"${buildah[@]}" rm "$container" > /dev/null 2>&1 || true' EXIT
"${buildah[@]}" add "$container" "$tarball" / > /dev/null
"${buildah[@]}" config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 --cmd python3 \
  --label org.opencontainers.image.title="edge-python-base" \
  --label org.opencontainers.image.description="Debian $suite minbase with python3 (mmdebstrap)" \
  "$container"
# A fixed timestamp: the same tarball always gives the same base layer and image digest.
"${buildah[@]}" commit --quiet --timestamp 0 "$container" "$image" > /dev/null
echo "base image $image is in $root"
