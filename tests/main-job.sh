#!/usr/bin/env bash
# The main job on embedded defaults: start a DPDK vhost-user back-end, probe it
# with vhostmigctl (text, then JSON), stop the back-end by pid, clean up.
set -euo pipefail

build=${1:-build}
ctl="$build/daemon/vhostmigctl"
work=$(mktemp -d /tmp/vhostmig-main-XXXXXX)
prefix="vhostmig-main-$$"
pid=

cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$work" "/var/run/dpdk/$prefix"
}
trap cleanup EXIT

# testpmd exits at EOF on stdin: feed it from a fifo we keep open.
mkfifo "$work/stdin"
dpdk-testpmd --no-huge -m 1024 --no-pci --file-prefix "$prefix" \
  --vdev "net_vhost0,iface=$work/dpdk.sock,queues=1" -- \
  --no-mlockall --total-num-mbufs=4096 --forward-mode=macswap --port-topology=loop -a \
  <"$work/stdin" >"$work/testpmd.log" 2>&1 &
pid=$!
exec 3>"$work/stdin"

for _ in $(seq 200); do [ -S "$work/dpdk.sock" ] && break; sleep 0.1; done
[ -S "$work/dpdk.sock" ] || { echo "testpmd did not start:"; cat "$work/testpmd.log"; exit 1; }

echo "== vhostmigctl probe $work/dpdk.sock"
"$ctl" probe "$work/dpdk.sock"
echo
echo "== vhostmigctl probe --json"
"$ctl" probe --json "$work/dpdk.sock"
