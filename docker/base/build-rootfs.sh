#!/bin/sh
# Builds the Debian root filesystem of the base stand-in with debootstrap, trims it, and packs it
# as an uncompressed tar archive for `docker import`.
# Usage: build-rootfs.sh OUTPUT_TAR SUITE VARIANT MIRROR SECURITY_MIRROR
# Needs root (debootstrap creates device nodes and chroots) and network access to MIRROR.
set -eu

output=$1
suite=$2
variant=$3
mirror=$4
security_mirror=$5

recipe_dir=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "$(dirname "$output")/rootfs.XXXXXX")
rootfs=$work/rootfs

cleanup() {
    # debootstrap mounts proc and sys inside the target and may leave them mounted on failure.
    for mount in "$rootfs/dev/pts" "$rootfs/dev" "$rootfs/proc" "$rootfs/sys"; do
        if mountpoint -q "$mount" 2>/dev/null; then
            umount -l "$mount" || true
        fi
    done
    # --one-file-system keeps rm out of any mount that could not be detached.
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

echo "debootstrap --variant=$variant $suite from $mirror"
debootstrap --variant="$variant" "$suite" "$rootfs" "$mirror"

cp -a "$recipe_dir/rootfs/." "$rootfs/"
rm -f "$rootfs/etc/apt/sources.list"
cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

echo "trimming documentation, translations, package lists and logs"
find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs/usr/share/man/"* "$rootfs/usr/share/info/"* "$rootfs/usr/share/lintian/"* \
    "$rootfs/usr/share/locale/"*
rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/"*.bin \
    "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/cache/debconf/"*-old \
    "$rootfs/var/lib/dpkg/"*-old "$rootfs/tmp/"*
find "$rootfs/var/log" -type f -delete

# The engine creates /dev, hostname, hosts and resolv.conf in every container it starts.
if ! mountpoint -q "$rootfs/dev"; then
    rm -rf "${rootfs:?}/dev/"*
fi
: > "$rootfs/etc/hostname"
: > "$rootfs/etc/resolv.conf"

tar --numeric-owner --one-file-system -C "$rootfs" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$output"
echo "root filesystem archive: $output ($(du -h "$output" | cut -f1))"
