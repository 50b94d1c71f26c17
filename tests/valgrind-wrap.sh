#!/usr/bin/env bash
# A `meson test --wrapper` for tests/run.sh test-valgrind: runs a test
# program under valgrind memcheck, and the vhostmigd it starts as well: the
# tests start the daemon from $VHOSTMIGD, which is pointed at a shim that
# execs valgrind on the real binary (same pid, so the tests' signals and
# waits reach it).  A test script runs as it is; the daemon it starts is
# still covered.  Programs exec'd by a test (testpmd, dbus-daemon,
# virtiofsd) are not followed.  Every valgrind run writes
# $VALGRIND_LOG_DIR/PROGRAM.PID.log (the daemon's PROGRAM.vhostmigd.PID.log,
# PROGRAM being the test's), which test-valgrind reads afterwards.
set -uo pipefail
: "${VALGRIND_LOG_DIR:?VALGRIND_LOG_DIR must name a directory for the logs}"
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

test_name=$(basename "$1")
vg=(valgrind --tool=memcheck --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite --show-leak-kinds=definite
    --track-origins=yes --num-callers=40
    --suppressions="$top/tests/valgrind.supp")

# The tests' own deadlines, as meson's timeouts, are 10 times longer under
# memcheck, the maximum downtime of a live migration meant to converge 100
# times (tests/common/clock.h: scaled_ms(), scaled_downtime_ms()).
export VHOSTMIG_TEST_TIME_SCALE=${VHOSTMIG_TEST_TIME_SCALE:-10}

shim=$(mktemp -d /tmp/vhostmig-valgrind-XXXXXX)
trap 'rm -rf "$shim"' EXIT
if [ -n "${VHOSTMIGD:-}" ]; then
  {
    echo '#!/bin/sh'
    printf 'exec'
    printf ' %q' "${vg[@]}" "--log-file=$VALGRIND_LOG_DIR/$test_name.vhostmigd.%p.log" "$VHOSTMIGD"
    printf ' "$@"\n'
  } >"$shim/vhostmigd"
  chmod +x "$shim/vhostmigd"
  export VHOSTMIGD=$shim/vhostmigd
fi

if [ "$(head -c4 "$1" 2>/dev/null)" = $'\x7fELF' ]; then
  "${vg[@]}" "--log-file=$VALGRIND_LOG_DIR/$test_name.%p.log" "$@"
else
  "$@"
fi
