#!/usr/bin/env bash
# Hot backup of a gateway data folder: copy it while the gateway runs, then verify the copy.
#
#   ops/backup.sh /var/lib/gateway /backup/gateway-$(date +%F)
#
# The copy must finish within the compaction grace period (12 hours by default; SPEC.md,
# "Hot backup"). Exit status: 0 the copy verified, 1 verify found problems, 2 usage or copy error.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 DATA_DIR BACKUP_DIR" >&2
    exit 2
fi
src=${1%/}
dst=${2%/}
gateway=${GATEWAY:-gateway}
if [ -e "$dst" ] && [ -n "$(ls -A "$dst" 2>/dev/null)" ]; then
    echo "$dst exists and is not empty" >&2
    exit 2
fi
mkdir -p "$dst"
# Files compaction deletes while the copy runs are reported as vanished (rsync exit 24);
# the copy is complete without them.
rsync -a "$src/" "$dst/" || [ $? -eq 24 ] || exit 2
rm -f "$dst/gateway.lock"
"$gateway" verify --data-dir "$dst"
