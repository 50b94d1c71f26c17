#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (run as root):
#   tests/run.sh main       install what is missing, build, run the main job
#   tests/run.sh test       install what is missing, build, run the whole test suite
#   tests/run.sh test-asan  the same suite in an ASan+UBSan build
#   tests/run.sh test-valgrind [BUILDDIR [TEST...]]
#                           the integration suite (D-Bus tests included) under valgrind
#                           memcheck, vhostmigd too: 0 errors, 0 definite leaks
# Everything is idempotent: run it again and it only rebuilds what changed.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

packages=(
  meson ninja-build pkg-config gcc clang clang-format
  libsystemd-dev libjson-c-dev libvirt-dev libcmocka-dev libxml2-dev libgnutls28-dev
  dpdk-dev qemu-system-common dbus systemd
  python3 util-linux libclang-rt-14-dev
  libvirt-daemon libvirt-clients
)

install_missing() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "run.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# setup_build DIR [meson options...]: configure once, reconfigure when options change.
setup_build() {
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    # A build directory from an older layout of the tree may not regenerate
    # (a program became a folder): start it afresh rather than fail.
    if ! meson configure "$dir" "$@" >/dev/null || ! ninja -C "$dir" build.ninja >/dev/null 2>&1; then
      echo "run.sh: $dir does not reconfigure; setting it up afresh"
      meson setup --wipe "$dir" "$@" >/dev/null
    fi
  else
    meson setup "$dir" "$@" >/dev/null
  fi
  ninja -C "$dir"
}

run_tests() {
  local dir=$1 rc=0
  # Unit tests in parallel; integration tests one at a time (testpmd busy-polls a core).
  meson test -C "$dir" --print-errorlogs --num-processes 2 | tee "$dir/run-tests.log" || rc=$?
  # One closing line in the plain form CI reads: "tests: N passed, N failed".
  local ok fail timeout skipped
  ok=$(awk '/^Ok:/ {print $2}' "$dir/run-tests.log")
  fail=$(awk '/^Fail:/ {print $2}' "$dir/run-tests.log")
  timeout=$(awk '/^Timeout:/ {print $2}' "$dir/run-tests.log")
  skipped=$(awk '/^Skipped:/ {print $2}' "$dir/run-tests.log")
  echo "tests: ${ok:-0} passed, $(( ${fail:-0} + ${timeout:-0} )) failed, ${skipped:-0} skipped"
  return "$rc"
}

# The integration suite under valgrind (tests/valgrind-wrap.sh), every run's
# log checked afterwards: a daemon killed by a test leaves no exit code to
# read, but its log still counts.  VALGRIND_LOGS may name the log directory.
run_valgrind() {
  local dir=$1 rc=0 bad=0 logs
  shift
  logs=${VALGRIND_LOGS:-$dir/valgrind-logs}
  rm -rf "$logs"
  mkdir -p "$logs"
  VALGRIND_LOG_DIR=$(cd "$logs" && pwd) meson test -C "$dir" --print-errorlogs --num-processes 1 \
    --suite integration --timeout-multiplier 10 --wrapper "$top/tests/valgrind-wrap.sh" "$@" || rc=$?
  local runs errors leaks prog
  local -A procs=() bads=()
  runs=$(ls "$logs" | wc -l)
  for f in "$logs"/*.log; do
    [ -e "$f" ] || continue
    # PROGRAM.PID.log or PROGRAM.vhostmigd.PID.log (tests/valgrind-wrap.sh)
    prog=$(basename "$f" | sed -E 's/\.[0-9]+\.log$//')
    procs[$prog]=$(( ${procs[$prog]:-0} + 1 ))
    errors=$(awk '/ERROR SUMMARY:/ {n = $4} END {print n + 0}' "$f")
    leaks=$(awk '/definitely lost:/ {gsub(",", "", $4); n = $4} END {print n + 0}' "$f")
    if [ "$errors" -ne 0 ] || [ "$leaks" -ne 0 ]; then
      echo "run.sh: $f: $errors errors, $leaks bytes definitely lost; the first:" >&2
      grep -m1 -A24 -E "Invalid|uninitialised|definitely lost in|Syscall param|Mismatched|Conditional jump|overlap" "$f" >&2 || true
      bad=$((bad + 1))
      bads[$prog]=$(( ${bads[$prog]:-0} + 1 ))
    fi
  done
  # Per program: a failed test leaks what cmocka's longjmp skipped, and every
  # process it forks afterwards inherits that heap and reports it too, so
  # the first bad log of a program is the one to read.
  for prog in $(printf '%s\n' "${!procs[@]}" | sort); do
    printf 'valgrind: %-40s %4d processes, %d with errors or definite leaks\n' "$prog" "${procs[$prog]}" "${bads[$prog]:-0}"
  done
  echo "valgrind: $runs processes checked, $bad with errors or definite leaks (logs in $logs)"
  [ "$bad" -eq 0 ] && return "$rc"
  return 1
}

mode=${1:-}
case "$mode" in
  main)
    install_missing
    setup_build build
    exec tests/main-job.sh build
    ;;
  test)
    install_missing
    setup_build build
    run_tests build
    ;;
  test-asan)
    install_missing
    setup_build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      run_tests build-asan
    ;;
  test-valgrind)
    packages+=(valgrind)
    install_missing
    vgdir=${2:-build-valgrind}
    setup_build "$vgdir" -Dbuildtype=debug -Db_sanitize=none
    shift $(( $# < 2 ? $# : 2 ))
    run_valgrind "$vgdir" "$@"
    ;;
  *)
    echo "usage: tests/run.sh main|test|test-asan|test-valgrind [BUILDDIR [TEST...]]" >&2
    exit 2
    ;;
esac
