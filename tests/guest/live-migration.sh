#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A live migration of vhostmig-guest between two vhostmigd (two private buses
# playing two hosts), with the guest on both ends and traffic at full speed
# through one DPDK testpmd with two vhost ports (the source's and the
# destination's, each echoing on itself):
#
#   tests/guest/live-migration.sh BUILD QUEUE_PAIRS [vhostmig-guest source options...]
#
# The destination runs vhostmig-guest --incoming, the source --migrate-to
# --live (a dirty bitmap registered, MigrateTo "Live" while frames flow, the
# pause at pre-switchover, MigrateContinue).  It passes when both guests pass
# and: the migration completed on both ends, it ran live (at least the full
# pass, the guest paused at pre-switchover and MigrateContinue was answered),
# the source's memory checksum is the migration's and the driver's image is
# the same at both ends, no frame was corrupted or duplicated, no more frames
# were lost than were in flight at the pause, and exactly one RARP came back
# at the destination; with LIVE_MIN_ROUNDS=N, at least N rounds after the full
# pass.  With LIVE_EXPECT=failed the migration must fail instead (options that
# keep it from converging): the source's guest never paused, went on here and
# lost, damaged or repeated no frame, the reason names the dirty rate and the
# bandwidth, and the destination gave up.  Everything is stopped by pid and
# removed, also on failure.  Exit 77 (skip) when dpdk-testpmd or dbus-daemon
# is missing.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:?usage: live-migration.sh BUILD QUEUE_PAIRS [source options]}
qps=${2:?usage: live-migration.sh BUILD QUEUE_PAIRS [source options]}
shift 2
daemon="$build/daemon/vhostmigd/vhostmigd"
guest="$build/daemon/guest/vhostmig-guest"
for p in dpdk-testpmd dbus-daemon python3; do
  command -v "$p" >/dev/null || { echo "live-migration: $p is not installed: skipped"; exit 77; }
done

work=$(mktemp -d /tmp/vhostmig-live-XXXXXX)
prefix="vhostmig-live-$$"
testpmd_pid='' daemon_a='' daemon_b='' dst_pid=''
BUS_PID='' BUS_DIR='' BUS2_PID='' BUS2_DIR=''

stop_pid() {
  local p=$1
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  set +e
  stop_pid "$dst_pid"
  stop_pid "$daemon_a"
  stop_pid "$daemon_b"
  stop_pid "$testpmd_pid"
  exec 3>&- 2>/dev/null
  [ -n "$BUS_PID" ] && "$top/tests/dbus/start-bus.sh" --stop "$BUS_PID" "$BUS_DIR"
  [ -n "$BUS2_PID" ] && "$top/tests/dbus/start-bus.sh" --stop "$BUS2_PID" "$BUS2_DIR"
  rm -rf "$work" "/var/run/dpdk/$prefix"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the back-end: two vhost ports of qps queue pairs ------------------------------
mkfifo "$work/stdin"
stdbuf -oL dpdk-testpmd --no-huge -m 1024 --no-pci --file-prefix "$prefix" \
  --vdev "net_vhost0,iface=$work/src.sock,queues=$qps" \
  --vdev "net_vhost1,iface=$work/dst.sock,queues=$qps" -- \
  --no-mlockall --total-num-mbufs=16384 --rxq="$qps" --txq="$qps" --forward-mode=macswap \
  --port-topology=loop -a <"$work/stdin" >"$work/testpmd.log" 2>&1 &
testpmd_pid=$!
exec 3>"$work/stdin"
for _ in $(seq 200); do grep -q "Press enter to exit" "$work/testpmd.log" && break; sleep 0.1; done
grep -q "Press enter to exit" "$work/testpmd.log" || { echo "testpmd did not start:"; cat "$work/testpmd.log"; exit 1; }

# ---- two hosts: a bus and a vhostmigd each ----------------------------------------
# start_host VAR-PREFIX: sets <prefix>_PID, <prefix>_DIR, <prefix>_ADDRESS and the daemon's pid.
start_host() {
  local vars name=$1 dpid
  vars=$("$top/tests/dbus/start-bus.sh")
  # shellcheck disable=SC2001 # only the names at the start of each line
  eval "$(sed "s/^BUS_/${name}_/" <<<"$vars")"
  local addr_var="${name}_ADDRESS"
  mkdir -p "$work/$name"
  DBUS_SYSTEM_BUS_ADDRESS=${!addr_var} RUNTIME_DIRECTORY=$work/$name "$daemon" >"$work/$name.log" 2>&1 &
  dpid=$!
  for _ in $(seq 100); do
    kill -0 "$dpid" 2>/dev/null || break
    [ "$(busctl --address="${!addr_var}" call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
         NameHasOwner s org.vhostmig1 2>/dev/null)" = "b true" ] && { echo "$dpid"; return 0; }
    sleep 0.1
  done
  echo "vhostmigd on $name did not start:" >&2; cat "$work/$name.log" >&2
  echo "$dpid"
  return 1
}
# Not in a subshell: the bus variables must stay set for the cleanup.
start_host BUS >"$work/a.pid" || { daemon_a=$(cat "$work/a.pid"); exit 1; }
daemon_a=$(cat "$work/a.pid")
start_host BUS2 >"$work/b.pid" || { daemon_b=$(cat "$work/b.pid"); exit 1; }
daemon_b=$(cat "$work/b.pid")

# ---- the guests -------------------------------------------------------------------
"$guest" --incoming --name live --socket "$work/dst.sock" --queue-pairs "$qps" --seconds 2 \
  --listen "unix:$work/BUS2/incoming.sock" --bus-address "$BUS2_ADDRESS" --json \
  >"$work/dst.json" 2>"$work/dst.err" &
dst_pid=$!
for _ in $(seq 100); do [ -s "$work/dst.json" ] && break; kill -0 "$dst_pid" 2>/dev/null || break; sleep 0.1; done
json_get() {
  python3 -c 'import json,sys
o = json.loads(sys.argv[1])
for path in sys.argv[2:]:
    v = o
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    print("" if v is None else (str(v).lower() if isinstance(v, bool) else v))' "$@"
}
incoming=$(head -n 1 "$work/dst.json")
mapfile -t at < <(json_get "$incoming" address token)
src_rc=0
"$guest" --name live --socket "$work/src.sock" --queue-pairs "$qps" --migrate-to "${at[0]}" --token "${at[1]}" \
  --live --migrate-after 1 --bus-address "$BUS_ADDRESS" --json "$@" >"$work/src.json" 2>"$work/src.err" || src_rc=$?
dst_rc=0
wait "$dst_pid" || dst_rc=$?
dst_pid=''
echo "-- source, exit status $src_rc:"; cat "$work/src.err"; tail -n 1 "$work/src.json"
echo "-- destination, exit status $dst_rc:"; cat "$work/dst.err"; tail -n 1 "$work/dst.json"

# ---- the verdict ------------------------------------------------------------------
python3 - "$(tail -n 1 "$work/src.json")" "$(tail -n 1 "$work/dst.json")" "$src_rc" "$dst_rc" \
  "${LIVE_EXPECT:-completed}" "${LIVE_MIN_ROUNDS:-0}" <<'EOF'
import json, sys
src, dst = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sm, dm, live = src["migration"], dst["migration"], src["migration"]["live"]
expect, min_rounds = sys.argv[5], int(sys.argv[6])
failed_checks = [
    ("the migration failed at both ends", sm["state"] == "failed" and dm["state"] == "failed"),
    ("both guests say so (exit 1)", sys.argv[3] == "1" and sys.argv[4] == "1"),
    ("the reason gives the dirty rate and the bandwidth", "pages/s" in sm["error"] and "MB/s" in sm["error"]),
    ("the source's guest never paused and went on here", not live["paused"] and live["resumed"]),
    ("the source lost, damaged or repeated no frame", src["frames"]["lost"] == 0 and src["frames"]["corrupted"] == 0
        and src["frames"]["duplicated"] == 0 and src["frames"]["never_came_back"] == 0),
    ("one dirty bitmap registered", live["dirty_bitmaps"] == 1),
]
checks = [
    ("at least %d round(s) after the full pass" % min_rounds, live["rounds"] >= min_rounds),
    ("source guest passed (exit 0)", sys.argv[3] == "0" and src["pass"]),
    ("destination guest passed (exit 0)", sys.argv[4] == "0" and dst["pass"]),
    ("completed at both ends", sm["state"] == "completed" and dm["state"] == "completed"),
    ("one dirty bitmap registered", live["dirty_bitmaps"] == 1),
    ("paused at pre-switchover, MigrateContinue answered", live["paused"] and live["continued"]),
    ("memory checksum equal to the migration's", sm["checksum"] == sm["memory_checksum"] == dm["checksum"]),
    ("driver image equal at both ends", sm["driver_checksum"] is not None and sm["driver_checksum"] == dm["driver_checksum"]),
    ("no frame corrupted or duplicated", dst["frames"]["corrupted"] == 0 and dst["frames"]["duplicated"] == 0
        and src["frames"]["corrupted"] == 0 and src["frames"]["duplicated"] == 0),
    ("lost <= in flight at the pause", dst["frames"]["lost"] <= sm["frames_in_flight"]),
    ("the in flight at the pause are the destination's", sm["frames_in_flight"] == dm["frames_in_flight"]),
    ("exactly one RARP at the destination", dm["rarp_seen_after"] == 1),
    ("traffic after the switchover", dst["frames"]["received"] > 0),
]
print("live migration, %d queue pair(s): %d round(s), %d pages, dirty rate %d pages/s, bandwidth %.1f MB/s, "
      "downtime %d ms; %d lost at the switchover of %d in flight; RARP %d" % (
      src["queue_pairs"], live["rounds"], sm["pages"], live["dirty_rate"], live["bandwidth"] / 1e6,
      sm["downtime_ms"], dst["frames"]["lost"], sm["frames_in_flight"], dm["rarp_seen_after"]))
if expect == "failed":
    checks = failed_checks
    print("reason: %s" % sm["error"])
ok = True
for text, good in checks:
    print("%-5s %s" % ("PASS" if good else "FAIL", text))
    ok = ok and good
sys.exit(0 if ok else 1)
EOF
