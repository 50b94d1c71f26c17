#!/usr/bin/env bash
# Stress: several VMs at once through one vhostmigd, each with its own DPDK
# vhost-user port, dirty logging switched on and off and harvested from
# outside while every guest drives verified traffic, and an unprivileged
# watcher reading properties all along.  Every guest must end with no frame
# lost, damaged or repeated and its dirty log covering what the back-end
# wrote; the daemon must answer throughout and exit 0 on SIGTERM.
#
#   tests/stress.sh [BUILD_DIR]     (VHOSTMIG_STRESS_VMS, VHOSTMIG_STRESS_SECONDS)
#
# The ping-pong's long run (tests/stress/pingpong.c: live migrations of one
# VM between two vhostmigd, A -> B -> A ..., traffic through DPDK all along;
# the suite runs 6 of them as the test stress-pingpong):
#
#   tests/stress.sh BUILD_DIR pingpong [MIGRATIONS]     (default 100)
#
# Everything it starts is stopped by pid; its files live in one temporary
# directory, removed at the end.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-build}
if [ "${2:-}" = pingpong ]; then
  exec env VHOSTMIGD="$build/daemon/vhostmigd/vhostmigd" START_BUS="$top/tests/dbus/start-bus.sh" \
    "$build/tests/stress/stress-pingpong" --migrations "${3:-100}"
fi
vms=${VHOSTMIG_STRESS_VMS:-4}
seconds=${VHOSTMIG_STRESS_SECONDS:-8}
ctl="$build/daemon/ctl/vhostmigctl"
daemon="$build/daemon/vhostmigd/vhostmigd"
guest="$build/daemon/guest/vhostmig-guest"

work=$(mktemp -d /tmp/vhostmig-stress-XXXXXX)
prefix="vhostmig-stress-$$"
testpmd_pid='' daemon_pid=''
declare -a guest_pids=()
BUS_PID='' BUS_DIR='' BUS_ADDRESS=''

stop_pid() {   # stop_pid PID: TERM, up to 5 s, then KILL
  local p=$1
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  set +e
  for p in "${guest_pids[@]}"; do stop_pid "$p"; done
  stop_pid "$daemon_pid"
  stop_pid "$testpmd_pid"
  exec 3>&- 2>/dev/null
  [ -n "$BUS_PID" ] && "$top/tests/dbus/start-bus.sh" --stop "$BUS_PID" "$BUS_DIR"
  rm -rf "$work" "/var/run/dpdk/$prefix"
}
trap cleanup EXIT

for f in "$ctl" "$daemon" "$guest"; do
  [ -x "$f" ] || { echo "stress: $f is missing (build first)"; exit 1; }
done

# One testpmd, one vhost port per VM, each port looped to itself (macswap echo).
vdevs=()
for i in $(seq 0 $((vms - 1))); do
  vdevs+=(--vdev "net_vhost$i,iface=$work/vm$i.sock,queues=1")
done
mkfifo "$work/stdin"
stdbuf -oL dpdk-testpmd --no-huge -m 1024 --no-pci --file-prefix "$prefix" "${vdevs[@]}" -- \
  --no-mlockall --total-num-mbufs=$((8192 * vms)) --forward-mode=macswap --port-topology=loop -a \
  <"$work/stdin" >"$work/testpmd.log" 2>&1 &
testpmd_pid=$!
exec 3>"$work/stdin"
for i in $(seq 0 $((vms - 1))); do
  for _ in $(seq 200); do [ -S "$work/vm$i.sock" ] && break; sleep 0.1; done
  [ -S "$work/vm$i.sock" ] || { echo "testpmd did not start:"; cat "$work/testpmd.log"; exit 1; }
done
# The socket exists before the port starts: wait until testpmd forwards (its
# log is line-buffered through stdbuf) so that nothing races its start-up.
for _ in $(seq 200); do grep -q "Press enter to exit" "$work/testpmd.log" && break; sleep 0.1; done
grep -q "Press enter to exit" "$work/testpmd.log" || { echo "testpmd did not start forwarding:"; cat "$work/testpmd.log"; exit 1; }

eval "$("$top/tests/dbus/start-bus.sh")"
export DBUS_SYSTEM_BUS_ADDRESS=$BUS_ADDRESS
"$daemon" >"$work/vhostmigd.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do "$ctl" status >/dev/null 2>&1 && break; sleep 0.1; done
"$ctl" status >/dev/null || { echo "vhostmigd did not start:"; cat "$work/vhostmigd.log"; exit 1; }

# The guests: every one logs and harvests on its own, with traffic all along.
for i in $(seq 0 $((vms - 1))); do
  "$guest" --name "stress$i" --socket "$work/vm$i.sock" --seconds "$seconds" --log --harvest-ms 50 \
    --json >"$work/guest$i.json" 2>"$work/guest$i.err" &
  guest_pids+=($!)
done

# Meanwhile: an unprivileged reader, and root listing and harvesting from outside.
reads=0 read_failures=0 harvests=0
deadline=$((SECONDS + seconds))
while [ $SECONDS -lt $deadline ]; do
  if setpriv --reuid=65534 --regid=65534 --clear-groups "$ctl" list >/dev/null 2>&1; then
    reads=$((reads + 1))
  else
    read_failures=$((read_failures + 1))
  fi
  for i in $(seq 0 $((vms - 1))); do
    "$ctl" logging harvest "stress$i" >/dev/null 2>&1 && harvests=$((harvests + 1))
  done
  sleep 0.2
done

failed=0
for i in $(seq 0 $((vms - 1))); do
  if wait "${guest_pids[$i]}"; then
    verdict=PASS
  else
    verdict=FAIL
    failed=1
    cat "$work/guest$i.err" >&2
  fi
  # One line per guest from its JSON verdict.
  python3 - "$work/guest$i.json" "$verdict" "$i" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
f = v["frames"]
print(f"stress{sys.argv[3]}: {sys.argv[2]}  sent {f['sent']} received {f['received']} lost {f['lost']} "
      f"corrupted {f['corrupted']} duplicated {f['duplicated']}  rarp {v['rarp']['seen']}  "
      f"dirty pages {v['log']['dirty_pages']} / written {v['log']['device_written_pages']}")
EOF
done
guest_pids=()
echo "unprivileged reads: $reads ok, $read_failures failed; harvests from outside: $harvests"
[ "$read_failures" -eq 0 ] || failed=1

vms_left=$("$ctl" --json list | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo "VMs left: $vms_left"
[ "$vms_left" -eq 0 ] || failed=1

kill -TERM "$daemon_pid"
if wait "$daemon_pid"; then echo "vhostmigd stopped on SIGTERM: exit 0"; else echo "vhostmigd: exit $?"; failed=1; fi
daemon_pid=''

if [ "$failed" -eq 0 ]; then echo "stress: PASS"; else echo "stress: FAIL"; cat "$work/vhostmigd.log"; fi
exit "$failed"
