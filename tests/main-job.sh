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
#   5. stop everything by pid, print a summary, clean up (also on failure).
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
  stop_pid "$daemon_pid" vhostmigd
  stop_pid "$pid" testpmd
  exec 3>&- 2>/dev/null
  [ -n "$BUS_PID" ] && "$top/tests/dbus/start-bus.sh" --stop "$BUS_PID" "$BUS_DIR"
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
# testpmd exits at EOF on stdin: feed it from a fifo we keep open.
mkfifo "$work/stdin"
stdbuf -oL dpdk-testpmd --no-huge -m 1024 --no-pci --file-prefix "$prefix" \
  --vdev "net_vhost0,iface=$work/dpdk.sock,queues=1" -- \
  --no-mlockall --total-num-mbufs=4096 --forward-mode=macswap --port-topology=loop -a \
  <"$work/stdin" >"$work/testpmd.log" 2>&1 &
pid=$!
exec 3>"$work/stdin"

for _ in $(seq 200); do [ -S "$work/dpdk.sock" ] && break; sleep 0.1; done
[ -S "$work/dpdk.sock" ] || { echo "testpmd did not start:"; cat "$work/testpmd.log"; exit 1; }
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
  "$guest" --name main-log --socket "$work/dpdk.sock" --seconds "$seconds" --log --harvest-ms 100

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
if out=$("$guest" --name main-json --socket "$work/dpdk.sock" --frames 20000 --log --json 2>/dev/null); then
  echo "$out"
  record PASS "guest --json"
else
  echo "$out"
  record FAIL "guest --json"
fi

echo
echo "== after the guests: no VM left"
vms=$(bus get-property org.vhostmig1 /org/vhostmig1 org.vhostmig1.Manager Vms)
echo "Manager.Vms: $vms"
if [ "$vms" = "ao 0" ]; then record PASS "every VM destroyed"; else record FAIL "VMs left: $vms"; fi

# ---- 5. stop by pid ---------------------------------------------------------------
echo
echo "== stopping vhostmigd (SIGTERM)"
if stop_pid "$daemon_pid" vhostmigd; then
  record PASS "vhostmigd stopped on SIGTERM, exit status 0"
else
  record FAIL "vhostmigd stop (exit status $?)"
fi
daemon_pid=
echo "-- vhostmigd log:"
cat "$work/vhostmigd.log"

echo
echo "== summary"
printf '%s\n' "${results[@]}"
if [ "$failed" -eq 0 ]; then echo "main job: PASS"; else echo "main job: FAIL"; fi
exit "$failed"
