#!/usr/bin/env bash
# The main job on embedded defaults:
#   1. start a DPDK vhost-user back-end (testpmd, macswap/loop: it echoes every
#      frame) and probe it with vhostmigctl (text, then JSON);
#   2. start a private D-Bus system bus with vhostmigd's real policy
#      (tests/dbus/start-bus.sh) and vhostmigd on it, without a config file;
#   3. check the policy: an unprivileged caller may read but not act;
#   4. Probe over D-Bus; run the synthetic guest (vhostmig-guest) for a few
#      seconds of traffic with dirty logging off, then on (harvests), then
#      with logging switched on, harvested and off from outside while frames
#      flow, and once with --json; each run ends with Announce (the RARP must
#      come back) and DestroyVm, and must lose, damage or repeat no frame;
#   5. a live migration between two hosts: a second private bus with a second
#      vhostmigd (host B); vhostmig-guest --incoming on B (testpmd's second
#      vhost port) prints an address and token, vhostmig-guest --migrate-to
#      --live on A (the first port) registers its dirty bitmap and runs
#      traffic, MigrateTo runs live while frames flow through A's back-end, the
#      guest pauses at pre-switchover and calls MigrateContinue; the guest goes
#      on at B with the same sequence numbers, through B's back-end.  The
#      verdict: rounds, pages, dirty rate, bandwidth, downtime, checksums
#      equal, no more frames lost at the switchover than were in flight at the
#      pause, one RARP at the destination;
#   6. stop everything by pid, print a summary, clean up (also on failure).
# Exit status 0 when every step passed.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-build}
ctl="$build/daemon/ctl/vhostmigctl"
daemon="$build/daemon/vhostmigd/vhostmigd"
guest="$build/daemon/guest/vhostmig-guest"
seconds=${VHOSTMIG_MAIN_SECONDS:-3}

work=$(mktemp -d /tmp/vhostmig-main-XXXXXX)
prefix="vhostmig-main-$$"
pid=            # testpmd
daemon_pid=
guest_pid=
BUS_PID='' BUS_DIR='' BUS_ADDRESS=''
# host B, for the migration
daemon2_pid=
dst_guest_pid=
BUS2_PID='' BUS2_DIR='' BUS2_ADDRESS=''

# stop_pid PID NAME: TERM, wait up to 5 s, then KILL.  Returns the exit status
# when it is our child and exited on TERM, 0 otherwise.
stop_pid() {
  local p=$1 name=$2 rc=0
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then
    echo "$name (pid $p) did not stop on SIGTERM: killed" >&2
    kill -KILL "$p" 2>/dev/null || true
    rc=137
  fi
  wait "$p" 2>/dev/null || rc=$?
  return $rc
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  set +e
  stop_pid "$guest_pid" vhostmig-guest
  stop_pid "$dst_guest_pid" "vhostmig-guest --incoming"
  stop_pid "$daemon_pid" vhostmigd
  stop_pid "$daemon2_pid" "vhostmigd (host B)"
  stop_pid "$pid" testpmd
  exec 3>&- 2>/dev/null
  [ -n "$BUS_PID" ] && "$top/tests/dbus/start-bus.sh" --stop "$BUS_PID" "$BUS_DIR"
  [ -n "$BUS2_PID" ] && "$top/tests/dbus/start-bus.sh" --stop "$BUS2_PID" "$BUS2_DIR"
  rm -rf "$work" "/var/run/dpdk/$prefix"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for f in "$ctl" "$daemon" "$guest"; do
  [ -x "$f" ] || { echo "main-job: $f is missing (build first: tests/run.sh main)"; exit 1; }
done

# ---- results ------------------------------------------------------------------
declare -a results=()
failed=0
record() {   # record STATUS TEXT
  results+=("$(printf '%-5s %s' "$1" "$2")")
  [ "$1" = PASS ] || failed=1
}
# run_step TEXT CMD...: run, show its output, record the outcome.
run_step() {
  local text=$1; shift
  if "$@"; then record PASS "$text"; else record FAIL "$text (exit status $?)"; fi
}

# ---- 1. the back-end and the probe --------------------------------------------
# testpmd exits at EOF on stdin: feed it from a fifo we keep open.  Two vhost
# ports, each looped on itself: dpdk.sock for host A's guests (and the
# migration's source), dpdk-dst.sock for the migration's destination on host B.
mkfifo "$work/stdin"
stdbuf -oL dpdk-testpmd --no-huge -m 1024 --no-pci --file-prefix "$prefix" \
  --vdev "net_vhost0,iface=$work/dpdk.sock,queues=1" \
  --vdev "net_vhost1,iface=$work/dpdk-dst.sock,queues=1" -- \
  --no-mlockall --total-num-mbufs=8192 --forward-mode=macswap --port-topology=loop -a \
  <"$work/stdin" >"$work/testpmd.log" 2>&1 &
pid=$!
exec 3>"$work/stdin"

for _ in $(seq 200); do [ -S "$work/dpdk.sock" ] && [ -S "$work/dpdk-dst.sock" ] && break; sleep 0.1; done
if ! [ -S "$work/dpdk.sock" ] || ! [ -S "$work/dpdk-dst.sock" ]; then
  echo "testpmd did not start:"; cat "$work/testpmd.log"; exit 1
fi
# The socket exists before the port starts: wait until testpmd forwards (its
# log is line-buffered through stdbuf) so that nothing races its start-up.
for _ in $(seq 200); do grep -q "Press enter to exit" "$work/testpmd.log" && break; sleep 0.1; done
grep -q "Press enter to exit" "$work/testpmd.log" || { echo "testpmd did not start forwarding:"; cat "$work/testpmd.log"; exit 1; }

echo "== vhostmigctl probe $work/dpdk.sock"
run_step "vhostmigctl probe" "$ctl" probe "$work/dpdk.sock"
echo
echo "== vhostmigctl probe --json"
run_step "vhostmigctl probe --json" "$ctl" probe --json "$work/dpdk.sock"

# ---- 2. a private system bus and vhostmigd on it ---------------------------------
echo
echo "== private D-Bus system bus (policy: units/org.vhostmig1.conf)"
bus_vars=$("$top/tests/dbus/start-bus.sh")
eval "$bus_vars"
echo "address $BUS_ADDRESS, dbus-daemon pid $BUS_PID"
export DBUS_SYSTEM_BUS_ADDRESS=$BUS_ADDRESS
bus() { busctl --address="$BUS_ADDRESS" "$@"; }

echo
echo "== vhostmigd (no configuration file: embedded defaults)"
"$daemon" >"$work/vhostmigd.log" 2>&1 &
daemon_pid=$!
owned=false
for _ in $(seq 100); do
  if ! kill -0 "$daemon_pid" 2>/dev/null; then break; fi
  if [ "$(bus call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
           NameHasOwner s org.vhostmig1 2>/dev/null)" = "b true" ]; then owned=true; break; fi
  sleep 0.1
done
if ! $owned; then
  echo "vhostmigd did not take org.vhostmig1:"
  cat "$work/vhostmigd.log"
  exit 1
fi
echo "vhostmigd pid $daemon_pid owns org.vhostmig1, version $(bus get-property org.vhostmig1 /org/vhostmig1 \
  org.vhostmig1.Manager Version)"
record PASS "vhostmigd started on the private bus"

# ---- 3. the policy, as an unprivileged caller ---------------------------------------
echo
echo "== access as uid 65534 (nobody)"
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
policy_ok=true
if out=$(as_nobody busctl --address="$BUS_ADDRESS" get-property org.vhostmig1 /org/vhostmig1 \
           org.vhostmig1.Manager Vms 2>&1); then
  echo "Get Manager.Vms:          allowed ($out)"
else
  echo "Get Manager.Vms:          REFUSED: $out"; policy_ok=false
fi
if out=$(as_nobody busctl --address="$BUS_ADDRESS" call org.vhostmig1 /org/vhostmig1 \
           org.freedesktop.DBus.ObjectManager GetManagedObjects 2>&1); then
  echo "GetManagedObjects:        allowed"
else
  echo "GetManagedObjects:        REFUSED: $out"; policy_ok=false
fi
for call in "CreateVm sa(httt)a{sv} nobody-vm 0 0" "Probe sbu $work/dpdk.sock false 1000"; do
  # shellcheck disable=SC2086 # word splitting wanted
  if out=$(as_nobody busctl --address="$BUS_ADDRESS" call org.vhostmig1 /org/vhostmig1 \
             org.vhostmig1.Manager $call 2>&1); then
    echo "${call%% *}: ALLOWED (must be refused): $out"; policy_ok=false
  elif [[ $out == *"Access denied"* || $out == *AccessDenied* || $out == *"Rejected send message"* ]]; then
    printf '%-25s refused (%s)\n' "${call%% *}:" "${out:0:60}..."
  else
    echo "${call%% *}: failed, but not as AccessDenied: $out"; policy_ok=false
  fi
done
if $policy_ok; then record PASS "policy: nobody may read, may not act"; else record FAIL "policy"; fi

# ---- 4. the daemon at work ---------------------------------------------------------
echo
echo "== Probe over D-Bus"
run_step "Manager.Probe" bus call org.vhostmig1 /org/vhostmig1 org.vhostmig1.Manager Probe sbu \
  "$work/dpdk.sock" false 5000

echo
echo "== vhostmig-guest: ${seconds} s of traffic, dirty logging off"
run_step "guest traffic, logging off, Announce" \
  "$guest" --name main-plain --socket "$work/dpdk.sock" --seconds "$seconds"

echo
echo "== vhostmig-guest: ${seconds} s of traffic, dirty logging on (harvest every 100 ms)"
run_step "guest traffic, logging on, harvests, Announce" \
  "$guest" --name main-log --socket "$work/dpdk.sock" --seconds "$seconds" --log --harvest-ms 100 --log-switch-locked

echo
echo "== vhostmig-guest: traffic while logging is switched on and off from outside"
"$guest" --name main-live --socket "$work/dpdk.sock" --seconds "$((seconds + 2))" >"$work/live.out" 2>&1 &
guest_pid=$!
vm=/org/vhostmig1/vm/main_2dlive
live_ok=true
for _ in $(seq 100); do
  [ "$(bus get-property org.vhostmig1 "$vm/dev/0" org.vhostmig1.Device State 2>/dev/null)" = 's "running"' ] && break
  sleep 0.1
done
sleep 0.5
if bus call org.vhostmig1 "$vm" org.vhostmig1.Vm StartLogging "a{sv}" 0; then
  echo "StartLogging: $(bus get-property org.vhostmig1 "$vm" org.vhostmig1.Vm Logging LogSize | tr '\n' ' ')"
  for _ in 1 2 3 4 5; do
    sleep 0.2
    echo "Harvest (new, dirty): $(bus call org.vhostmig1 "$vm" org.vhostmig1.Vm Harvest)" || live_ok=false
  done
  bus call org.vhostmig1 "$vm" org.vhostmig1.Vm StopLogging || live_ok=false
  dirty=$(bus get-property org.vhostmig1 "$vm" org.vhostmig1.Vm DirtyPages)
  echo "StopLogging: $(bus get-property org.vhostmig1 "$vm" org.vhostmig1.Vm Logging), DirtyPages $dirty"
  [ "$dirty" != "t 0" ] || { echo "no dirty page logged during traffic"; live_ok=false; }
else
  live_ok=false
fi
guest_rc=0
wait "$guest_pid" || guest_rc=$?
guest_pid=
cat "$work/live.out"
if $live_ok && [ "$guest_rc" -eq 0 ]; then
  record PASS "guest traffic, logging switched on and off during it"
else
  record FAIL "guest traffic with logging switched on and off (guest exit status $guest_rc)"
fi

echo
echo "== vhostmig-guest --json: 20000 frames, logging on"
if out=$("$guest" --name main-json --socket "$work/dpdk.sock" --frames 20000 --log --log-switch-locked --json 2>/dev/null); then
  echo "$out"
  record PASS "guest --json"
else
  echo "$out"
  record FAIL "guest --json"
fi

# ---- 5. a migration between two hosts -------------------------------------------
# start_host_b: a second private bus and a second vhostmigd on it.
start_host_b() {
  local vars owned=false
  vars=$("$top/tests/dbus/start-bus.sh") || return 1
  # shellcheck disable=SC2001 # only the names at the start of each line
  eval "$(sed 's/^BUS_/BUS2_/' <<<"$vars")"
  mkdir -p "$work/hostb"
  DBUS_SYSTEM_BUS_ADDRESS=$BUS2_ADDRESS RUNTIME_DIRECTORY=$work/hostb "$daemon" >"$work/vhostmigd-b.log" 2>&1 &
  daemon2_pid=$!
  for _ in $(seq 100); do
    kill -0 "$daemon2_pid" 2>/dev/null || break
    if [ "$(busctl --address="$BUS2_ADDRESS" call org.freedesktop.DBus /org/freedesktop/DBus \
             org.freedesktop.DBus NameHasOwner s org.vhostmig1 2>/dev/null)" = "b true" ]; then owned=true; break; fi
    sleep 0.1
  done
  $owned || { echo "vhostmigd on host B did not take org.vhostmig1:"; cat "$work/vhostmigd-b.log"; return 1; }
  echo "host B: bus $BUS2_ADDRESS (dbus-daemon pid $BUS2_PID), vhostmigd pid $daemon2_pid"
}

# json_get FILE-LINE EXPR...: fields of one JSON object (python3: no jq needed).
json_get() {
  python3 -c 'import json,sys
o = json.loads(sys.argv[1])
for path in sys.argv[2:]:
    v = o
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    print("" if v is None else (str(v).lower() if isinstance(v, bool) else v))' "$@"
}

# migration_verdict SRC-JSON DST-JSON: one line for the summary; 0 when it passes.
migration_verdict() {
  local src=$1 dst=$2 f
  mapfile -t f < <(json_get "$src" pass migration.state migration.checksum migration.memory_checksum \
                     migration.driver_checksum migration.frames_in_flight migration.downtime_ms \
                     migration.live.rounds migration.live.dirty_rate migration.live.bandwidth \
                     migration.live.paused migration.live.continued frames.received)
  local s_pass=${f[0]} s_state=${f[1]} s_sum=${f[2]} s_mem=${f[3]} s_drv=${f[4]} in_flight=${f[5]} s_down=${f[6]}
  local rounds=${f[7]} dirty_rate=${f[8]} bandwidth=${f[9]} paused=${f[10]} continued=${f[11]} s_received=${f[12]}
  mapfile -t f < <(json_get "$dst" pass migration.state migration.checksum migration.driver_checksum \
                     frames.lost frames.corrupted frames.duplicated migration.rarp_seen_after migration.rarp_sent \
                     migration.downtime_ms migration.pages migration.zero_pages frames.received)
  local d_pass=${f[0]} d_state=${f[1]} d_sum=${f[2]} d_drv=${f[3]} lost=${f[4]} corrupted=${f[5]} dup=${f[6]}
  local rarp_seen=${f[7]} rarp_sent=${f[8]} d_down=${f[9]} pages=${f[10]} zero=${f[11]} received=${f[12]}
  local ok=true sums
  if [ -n "$s_sum" ] && [ "$s_sum" = "$d_sum" ] && [ "$s_sum" = "$s_mem" ] && [ -n "$s_drv" ] && [ "$s_drv" = "$d_drv" ]; then
    sums="checksum equal ($d_sum, driver image $d_drv)"
  else
    sums="checksums DIFFER (source $s_sum memory $s_mem driver $s_drv, destination $d_sum driver $d_drv)"; ok=false
  fi
  [ "$s_pass" = true ] && [ "$d_pass" = true ] && [ "$s_state" = completed ] && [ "$d_state" = completed ] || ok=false
  [ "${lost:-1}" -le "${in_flight:-0}" ] && [ "$corrupted" = 0 ] && [ "$dup" = 0 ] || ok=false
  [ "$rarp_seen" = 1 ] || ok=false
  [ "$paused" = true ] && [ "$continued" = true ] || ok=false
  migration_line="live migration A -> B ($s_state/$d_state): ${rounds:-?} round(s) after the full pass, $pages pages ($zero zero), dirty rate ${dirty_rate:-?} pages/s, bandwidth $(awk -v b="${bandwidth:-0}" 'BEGIN { printf "%.1f", b / 1e6 }') MB/s, downtime $d_down ms (source $s_down ms); paused at pre-switchover: $paused; $sums; $lost frames lost at the switchover of $in_flight in flight at the pause; $corrupted corrupted, $dup duplicated; $s_received received at A, $received in all at B; RARP seen at the destination: $rarp_seen ($rarp_sent sent)"
  $ok
}

echo
echo "== live migration: host A -> host B, traffic before, during and ${seconds} s after"
migration_line="migration A -> B: not run"
if start_host_b; then
  record PASS "host B: a second bus and vhostmigd"
  "$guest" --incoming --name main-migrated --socket "$work/dpdk-dst.sock" --seconds "$seconds" --log-switch-locked \
    --listen "unix:$work/hostb/incoming.sock" --bus-address "$BUS2_ADDRESS" --json \
    >"$work/dst.json" 2>"$work/dst.err" &
  dst_guest_pid=$!
  for _ in $(seq 100); do [ -s "$work/dst.json" ] && break; kill -0 "$dst_guest_pid" 2>/dev/null || break; sleep 0.1; done
  incoming=$(head -n 1 "$work/dst.json" 2>/dev/null || true)
  address='' token=''
  if [ -n "$incoming" ]; then
    address=$(json_get "$incoming" address 2>/dev/null || true)
    token=$(json_get "$incoming" token 2>/dev/null || true)
  fi
  echo "destination (host B) waits at $address"
  src_rc=0
  if [ -n "$address" ] && [ -n "$token" ]; then
    "$guest" --name main-migrated --socket "$work/dpdk.sock" --migrate-to "$address" --token "$token" --live \
      --log-switch-locked --migrate-after 1 --bus-address "$BUS_ADDRESS" --json >"$work/src.json" 2>"$work/src.err" || src_rc=$?
  else
    echo "the destination printed no address and token"; src_rc=1
    stop_pid "$dst_guest_pid" "vhostmig-guest --incoming" || true
  fi
  dst_rc=0
  wait "$dst_guest_pid" || dst_rc=$?
  dst_guest_pid=
  echo "-- source (host A), exit status $src_rc:"; cat "$work/src.err"; tail -n 1 "$work/src.json" 2>/dev/null || true
  echo "-- destination (host B), exit status $dst_rc:"; cat "$work/dst.err"; tail -n 1 "$work/dst.json" 2>/dev/null || true
  src_out=$(tail -n 1 "$work/src.json" 2>/dev/null || true)
  dst_out=$(tail -n 1 "$work/dst.json" 2>/dev/null || true)
  if [ "$src_rc" -eq 0 ] && [ "$dst_rc" -eq 0 ] && migration_verdict "$src_out" "$dst_out"; then
    record PASS "$migration_line"
  else
    [ -n "$src_out" ] && [ -n "$dst_out" ] && { migration_verdict "$src_out" "$dst_out" || true; }
    record FAIL "$migration_line (guests' exit status: source $src_rc, destination $dst_rc)"
  fi
  released=$(json_get "${src_out:-null}" migration.source_device_state 2>/dev/null || true)
  if [ "$released" = disconnected ]; then
    record PASS "the source's device released at the commit (State disconnected)"
  else
    record FAIL "the source's device after the migration: '${released:-unknown}', not released"
  fi
else
  record FAIL "host B did not start"
fi

echo
echo "== after the guests: no VM left"
vms=$(bus get-property org.vhostmig1 /org/vhostmig1 org.vhostmig1.Manager Vms)
vms_b=$( [ -n "$BUS2_ADDRESS" ] && busctl --address="$BUS2_ADDRESS" get-property org.vhostmig1 /org/vhostmig1 \
           org.vhostmig1.Manager Vms 2>/dev/null || echo "ao 0")
echo "Manager.Vms: host A $vms, host B $vms_b"
if [ "$vms" = "ao 0" ] && [ "$vms_b" = "ao 0" ]; then record PASS "every VM destroyed, on both hosts"
else record FAIL "VMs left: host A $vms, host B $vms_b"; fi

# ---- 6. stop by pid ---------------------------------------------------------------
echo
echo "== stopping vhostmigd (SIGTERM)"
if stop_pid "$daemon_pid" vhostmigd; then
  record PASS "vhostmigd stopped on SIGTERM, exit status 0"
else
  record FAIL "vhostmigd stop (exit status $?)"
fi
daemon_pid=
if [ -n "$daemon2_pid" ]; then
  if stop_pid "$daemon2_pid" "vhostmigd (host B)"; then
    record PASS "vhostmigd on host B stopped on SIGTERM, exit status 0"
  else
    record FAIL "vhostmigd on host B stop (exit status $?)"
  fi
  daemon2_pid=
fi
echo "-- vhostmigd log:"
cat "$work/vhostmigd.log"
if [ -s "$work/vhostmigd-b.log" ]; then echo "-- vhostmigd (host B) log:"; cat "$work/vhostmigd-b.log"; fi

echo
echo "== summary"
printf '%s\n' "${results[@]}"
if [ "$failed" -eq 0 ]; then echo "main job: PASS"; else echo "main job: FAIL"; fi
exit "$failed"
