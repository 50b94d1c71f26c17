#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# policy-test.sh VHOSTMIGD
#
# Who may do what on org.vhostmig1, on a private bus (start-bus.sh):
#   - with the real policy (units/org.vhostmig1.conf): root may call
#     everything; uid 65534 may read properties, introspect, ping and list
#     objects, and is refused every method and Properties.Set by the bus;
#   - on a permissive bus (no vhostmig policy): uid 65534 still gets
#     AccessDenied for every state-changing method, from vhostmigd itself.
# Needs root (to drop to uid 65534 with setpriv), dbus-daemon and busctl;
# exits 77 (skipped) without them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
daemon=$1

if [ "$(id -u)" -ne 0 ]; then echo "not root: skipped"; exit 77; fi
for p in dbus-daemon busctl setpriv; do
  command -v "$p" >/dev/null || { echo "$p not installed: skipped"; exit 77; }
done

daemon_pid='' BUS_PID='' BUS_DIR=''
stop_all() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"
    for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  daemon_pid=''
  if [ -n "$BUS_PID" ]; then "$here/start-bus.sh" --stop "$BUS_PID" "$BUS_DIR"; fi
  BUS_PID='' BUS_DIR=''
}
trap stop_all EXIT

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

start() {   # start [--permissive]
  local vars
  vars=$("$here/start-bus.sh" "$@")
  eval "$vars"
  DBUS_SYSTEM_BUS_ADDRESS=$BUS_ADDRESS "$daemon" >"$BUS_DIR/vhostmigd.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 100); do
    [ "$(busctl --address="$BUS_ADDRESS" call org.freedesktop.DBus /org/freedesktop/DBus \
          org.freedesktop.DBus NameHasOwner s org.vhostmig1 2>/dev/null)" = "b true" ] && return 0
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$BUS_DIR/vhostmigd.log"
  echo "vhostmigd did not start"
  exit 1
}

# expect WHO allow|bus-deny|daemon-deny DESCRIPTION busctl-args...
expect() {
  local who=$1 want=$2 what=$3 out rc=0 before after; shift 3
  before=$(rejections)
  if [ "$who" = nobody ]; then
    out=$(setpriv --reuid=65534 --regid=65534 --clear-groups busctl --address="$BUS_ADDRESS" "$@" 2>&1) || rc=$?
  else
    out=$(busctl --address="$BUS_ADDRESS" "$@" 2>&1) || rc=$?
  fi
  after=$(rejections)
  local got
  if [ $rc -eq 0 ]; then
    got=allow
  elif [[ $out == *"Access denied"* ]]; then
    # busctl shows AccessDenied as "Access denied" whoever sent it; the bus
    # logs each message its policy rejects.
    if [ "$after" -gt "$before" ]; then got='bus-deny'; else got='daemon-deny'; fi
  else
    got="error: $out"
  fi
  # A root call that reaches the daemon and fails for another reason (no
  # such VM, bad arguments) was allowed through.
  if [ "$want" = reached ] && [ "$got" != bus-deny ] && [ "$got" != daemon-deny ]; then got=reached; fi
  if [ "$got" = "$want" ]; then
    printf 'ok   %-7s %-45s %s\n' "$who" "$what" "$want"
  else
    fail "$who $what: want $want, got $got"
  fi
}

# Messages the bus's policy rejected so far (dbus-daemon logs each one).
rejections() { grep -c "Rejected send message" "$BUS_DIR/bus.log" || true; }

D=org.vhostmig1 P=/org/vhostmig1
MI=org.vhostmig1.Manager

echo "== the real policy"
start
for who in nobody root; do
  expect "$who" allow "Get Manager.Version" get-property "$D" "$P" $MI Version
  expect "$who" allow "Properties.GetAll" call "$D" "$P" org.freedesktop.DBus.Properties GetAll s $MI
  expect "$who" allow "Introspect" introspect "$D" "$P"
  expect "$who" allow "Peer.Ping" call "$D" "$P" org.freedesktop.DBus.Peer Ping
  expect "$who" allow "GetManagedObjects" call "$D" "$P" org.freedesktop.DBus.ObjectManager GetManagedObjects
done
expect nobody reached "GetVm (NoSuchVm)" call "$D" "$P" $MI GetVm s x
expect nobody bus-deny "CreateVm" call "$D" "$P" $MI CreateVm 'sa(httt)a{sv}' x 0 0
expect nobody bus-deny "DestroyVm" call "$D" "$P" $MI DestroyVm s x
expect nobody bus-deny "Probe" call "$D" "$P" $MI Probe sbu /nonexistent false 100
expect nobody bus-deny "Properties.Set" set-property "$D" "$P" $MI Version s x
expect nobody bus-deny "Vm.StartLogging" call org.vhostmig1 /org/vhostmig1/vm/x org.vhostmig1.Vm StartLogging 'a{sv}' 0
expect root reached "CreateVm (no memory: InvalidArgs)" call "$D" "$P" $MI CreateVm 'sa(httt)a{sv}' x 0 0
expect root reached "DestroyVm (NoSuchVm)" call "$D" "$P" $MI DestroyVm s x
expect root reached "Probe (Backend error)" call "$D" "$P" $MI Probe sbu /nonexistent false 100
stop_all

echo "== a permissive bus: the daemon's own check"
start --permissive
expect nobody allow "Get Manager.Version" get-property "$D" "$P" $MI Version
expect nobody daemon-deny "CreateVm" call "$D" "$P" $MI CreateVm 'sa(httt)a{sv}' x 0 0
expect nobody daemon-deny "DestroyVm" call "$D" "$P" $MI DestroyVm s x
expect nobody daemon-deny "Probe" call "$D" "$P" $MI Probe sbu /nonexistent false 100
expect root reached "DestroyVm (NoSuchVm)" call "$D" "$P" $MI DestroyVm s x
# GetVm is open to everyone: the daemon answers an unprivileged caller.
expect nobody reached "GetVm (NoSuchVm)" call "$D" "$P" $MI GetVm s x
stop_all

if [ $failures -ne 0 ]; then echo "$failures failure(s)"; exit 1; fi
echo "all ok"
