#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# verify-unit.sh UNIT INSTALLED_EXEC BUILT_EXEC
#
# systemd-analyze verify on the generated vhostmigd.service.  verify insists
# that ExecStart= names an executable that exists, so a copy of the unit with
# the installed path replaced by the built daemon is checked, under the same
# name.  Any diagnostic about the unit fails the test; 77 (skip) only when
# systemd-analyze is not installed.
set -euo pipefail

unit=$1 installed=$2 built=$3

if ! command -v systemd-analyze >/dev/null; then
  echo "systemd-analyze not installed: skipped"
  exit 77
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
name=$(basename "$unit")
grep -q "^ExecStart=$installed\$" "$unit" || { echo "$unit: ExecStart= is not $installed"; exit 1; }
sed "s|^ExecStart=$installed\$|ExecStart=$built|" "$unit" >"$tmp/$name"

echo "== systemd-analyze verify --man=no $name (ExecStart=$built)"
# verify also reports problems of other units it loads (dbus.socket,
# multi-user.target): only lines about ours count.
out=$(systemd-analyze verify --man=no "$tmp/$name" 2>&1) && rc=0 || rc=$?
printf '%s\n' "$out"
ours=$(printf '%s\n' "$out" | grep -F "$name" || true)
if [ "$rc" -ne 0 ] || [ -n "$ours" ]; then
  echo "FAIL: systemd-analyze verify exit status $rc"
  exit 1
fi
# For the record (not a criterion): systemd's own exposure estimate.
systemd-analyze security --offline=yes "$tmp/$name" 2>/dev/null | grep -F "Overall exposure level" || true
echo "OK"
