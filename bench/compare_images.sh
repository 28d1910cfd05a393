#!/usr/bin/env bash
# `qcow2 compare` against `qemu-img compare` on 512 MiB of random data held by
# two qcow2 images of different cluster sizes (64 KiB and 2 MiB), paired and
# alternating with farm-bench (or hyperfine). The inputs are made in a temp
# dir and removed afterwards.
# Usage: bench/compare_images.sh [RUNS]   (from the repository root)
set -euo pipefail
RUNS=${1:-9}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
head -c $((512 * 1024 * 1024)) /dev/urandom >"$DIR/data.raw"
qemu-img convert -O qcow2 "$DIR/data.raw" "$DIR/a.qcow2"
qemu-img convert -O qcow2 -o cluster_size=2M "$DIR/data.raw" "$DIR/b.qcow2"
rm "$DIR/data.raw"
OURS="deno run --allow-read --allow-ffi cli.ts compare $DIR/a.qcow2 $DIR/b.qcow2"
THEIRS="qemu-img compare $DIR/a.qcow2 $DIR/b.qcow2"
uptime
if command -v farm-bench >/dev/null; then
  farm-bench -n "$RUNS" --timeout 600 --vs "$THEIRS" -- $OURS
else
  hyperfine -N -r "$RUNS" "$OURS" "$THEIRS"
fi
