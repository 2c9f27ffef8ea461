#!/bin/sh
# Build the image the examples use, docker.io/library/busybox:1.35, from
# this machine's busybox-static, and import it into orch — the air-gapped
# path, for machines that reach no registry. (Where Docker Hub is
# reachable, orch pulls the real one instead.)
#
#   sudo sh examples/build-image.sh          # needs umoci, skopeo, busybox-static
#
# ORCH (the orch binary) and ORCH_DATA_DIR (its --data-dir) are honoured.
set -eu

ORCH=${ORCH:-orch}
NAME=docker.io/library/busybox:1.35
for tool in umoci skopeo busybox; do
    command -v "$tool" >/dev/null 2>&1 ||
        { echo "error: $tool is missing: apt-get install umoci skopeo busybox-static" >&2; exit 1; }
done
busybox=$(command -v busybox)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

umoci init --layout "$work/oci"
umoci new --image "$work/oci:latest"
umoci unpack --rootless --image "$work/oci:latest" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/tmp"
cp "$busybox" "$work/bundle/rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$work/bundle/rootfs/bin/$applet"
done
umoci repack --image "$work/oci:latest" "$work/bundle"
umoci config --image "$work/oci:latest" --config.cmd /bin/sh --config.env PATH=/bin
skopeo copy -q "oci:$work/oci:latest" "oci-archive:$work/busybox.tar:$NAME"
"$ORCH" image import "$work/busybox.tar"
echo "imported $NAME"
