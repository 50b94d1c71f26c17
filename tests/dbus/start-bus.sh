#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A private D-Bus system bus for the tests and the main job, with vhostmigd's
# real policy (units/org.vhostmig1.conf).
#
#   tests/dbus/start-bus.sh [--permissive] [--policy FILE]
#       Starts dbus-daemon in the background in a new temporary directory and
#       prints, as shell assignments for eval:
#         BUS_ADDRESS=unix:path=DIR/bus   (for DBUS_SYSTEM_BUS_ADDRESS)
#         BUS_PID=PID                     (the dbus-daemon)
#         BUS_DIR=DIR                     (config, socket, log)
#       --policy FILE   the policy to include (default: units/org.vhostmig1.conf)
#       --permissive    no vhostmig policy: anyone may own org.vhostmig1 and
#                       call anything on it, so that the daemon's own root
#                       check can be tested
#   tests/dbus/start-bus.sh --stop PID DIR
#       Stops that dbus-daemon by pid (TERM, then KILL after 5 s) and removes
#       DIR.
#
# Example:
#   eval "$(tests/dbus/start-bus.sh)"
#   DBUS_SYSTEM_BUS_ADDRESS=$BUS_ADDRESS build/daemon/vhostmigd &
#   ...
#   tests/dbus/start-bus.sh --stop "$BUS_PID" "$BUS_DIR"
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)

usage() {
  echo "usage: start-bus.sh [--permissive] [--policy FILE] | --stop PID DIR" >&2
  exit 2
}

stop_bus() {
  local pid=$1 dir=$2
  [[ $pid =~ ^[0-9]+$ ]] || usage
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # Only ever a directory this script made.
  case "$dir" in
    /tmp/vhostmig-bus-*) rm -rf -- "$dir" ;;
    *) echo "start-bus.sh: not removing '$dir' (not ours)" >&2 ;;
  esac
}

policy=$top/units/org.vhostmig1.conf
permissive=false
while [ $# -gt 0 ]; do
  case "$1" in
    --stop) [ $# -eq 3 ] || usage; stop_bus "$2" "$3"; exit 0 ;;
    --permissive) permissive=true; shift ;;
    --policy) [ $# -ge 2 ] || usage; policy=$2; shift 2 ;;
    *) usage ;;
  esac
done

command -v dbus-daemon >/dev/null || { echo "start-bus.sh: dbus-daemon is not installed" >&2; exit 1; }
[ -r "$policy" ] || { echo "start-bus.sh: cannot read policy $policy" >&2; exit 1; }
policy=$(cd "$(dirname "$policy")" && pwd)/$(basename "$policy")

dir=$(mktemp -d /tmp/vhostmig-bus-XXXXXX)
# Unprivileged test callers must reach the socket.
chmod 0755 "$dir"

if $permissive; then
  extra='        <!-- permissive: the daemon alone decides who may do what -->
        <policy context="default">
                <allow own="org.vhostmig1"/>
                <allow send_destination="org.vhostmig1"/>
                <allow receive_sender="org.vhostmig1"/>
        </policy>'
else
  extra="        <include>$policy</include>"
fi

# Fill in the template (the values contain no characters special to awk's
# index/substr, which are used instead of sub() for that reason).
awk -v dir="$dir" -v extra="$extra" '
  function repl(s, key, val,   i) {
    while ((i = index(s, key)) > 0) s = substr(s, 1, i - 1) val substr(s, i + length(key))
    return s
  }
  { print repl(repl($0, "@DIR@", dir), "@EXTRA@", extra) }
' "$here/bus.conf.in" >"$dir/bus.conf"

dbus-daemon --config-file="$dir/bus.conf" --nofork --nopidfile --print-address=1 \
  </dev/null >"$dir/address" 2>"$dir/bus.log" &
pid=$!

for _ in $(seq 100); do
  [ -s "$dir/address" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start-bus.sh: dbus-daemon exited:" >&2
    cat "$dir/bus.log" >&2
    rm -rf -- "$dir"
    exit 1
  fi
  sleep 0.05
done
if [ ! -s "$dir/address" ]; then
  echo "start-bus.sh: dbus-daemon did not start within 5 s" >&2
  stop_bus "$pid" "$dir"
  exit 1
fi

# dbus-daemon adds a guid to the address: keep it, clients may check it.
address=$(head -n1 "$dir/address")
printf 'BUS_ADDRESS=%q\nBUS_PID=%q\nBUS_DIR=%q\n' "$address" "$pid" "$dir"
