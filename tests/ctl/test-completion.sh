#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# vhostmigctl's bash completion: commands, subcommands, options, and VM
# names read from 'vhostmigctl list -q' (a stand-in vhostmigctl on PATH
# records how it was called), with the bus the command line names.
#
#   tests/ctl/test-completion.sh COMPLETION-FILE
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: test-completion.sh COMPLETION-FILE" >&2; exit 2; }
completion=$1
work=$(mktemp -d /tmp/vhostmig-completion-XXXXXX)
trap 'rm -rf -- "$work"' EXIT

cat >"$work/vhostmigctl" <<'STANDIN'
#!/usr/bin/env bash
printf '%s\n' "$*" >>"${0%/*}/calls"
[[ " $* " == *" list -q "* ]] && printf 'vm0    2M  1  off  yes\nvm-db  1G  0  on   no\n'
exit 0
STANDIN
chmod +x "$work/vhostmigctl"
PATH=$work:$PATH

# complete() and compopt() need a completion context; only the function is tested.
complete() { :; }
compopt() { :; }
# shellcheck source=/dev/null
source "$completion"

failures=0
# expect "WORDS..." "EXPECTED COMPLETIONS" (the last word is the one completed, may be empty)
expect() {
  local line=$1 want=$2
  read -r -a COMP_WORDS <<<"$line"
  [[ $line == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMPREPLY=()
  _vhostmigctl
  local got
  got=$(printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ' | sed 's/ $//')
  want=$(printf '%s\n' $want | sort | tr '\n' ' ' | sed 's/ $//')
  if [[ $got != "$want" ]]; then
    echo "FAIL: '$line': got '$got', expected '$want'"
    failures=$((failures + 1))
  else
    echo "ok: '$line' -> '$got'"
  fi
}

expect "vhostmigctl " "probe status list show vm device logging announce reconnect migrate watch help"
expect "vhostmigctl lo" "logging"
expect "vhostmigctl logging " "start stop harvest"
expect "vhostmigctl vm " "create destroy"
expect "vhostmigctl device add vm0 /tmp/s --queue-p" "--queue-pairs"
expect "vhostmigctl show " "vm0 vm-db"
expect "vhostmigctl --json logging harvest vm-" "vm-db"
expect "vhostmigctl show vm0 " ""
expect "vhostmigctl status --no" "--no-legend"
expect "vhostmigctl help " "probe status list show vm device logging announce reconnect migrate watch"
expect "vhostmigctl migrate " "incoming start continue status cancel save-state load-state"
expect "vhostmigctl migrate s" "start status save-state"
expect "vhostmigctl migrate start " "vm0 vm-db"
expect "vhostmigctl migrate start vm0 --" "--help --json --quiet --no-legend --host --bus-address --version --to --token --wait --live --max-downtime --max-bandwidth --max-rounds --force-switchover --pause-timeout"
expect "vhostmigctl migrate start vm0 --live --max-" "--max-downtime --max-bandwidth --max-rounds"
expect "vhostmigctl migrate start vm0 --max-rounds " ""
expect "vhostmigctl migrate start --max-rounds 5 --live " "vm0 vm-db"
expect "vhostmigctl migrate c" "continue cancel"
expect "vhostmigctl migrate continue " "vm0 vm-db"
expect "vhostmigctl migrate incoming vm0 --l" "--listen"
expect "vhostmigctl migrate incoming --listen tcp:0:4444 " "vm0 vm-db"
expect "vhostmigctl migrate start --to unix:/x --token abc " "vm0 vm-db"
expect "vhostmigctl migrate start vm0 --to " ""
expect "vhostmigctl migrate status vm0 " ""
expect "vhostmigctl migrate load-state " "vm0 vm-db"
expect "vhostmigctl device add vm0 /tmp/s --i" "--incoming"
expect "vhostmigctl device add vm0 /tmp/s --t" "--type"
expect "vhostmigctl device add vm0 /tmp/s --type " "net fs blk other"
expect "vhostmigctl device add --type fs " "vm0 vm-db"

# The VM names come from the bus the command line names.
: >"$work/calls"
expect "vhostmigctl --bus-address unix:path=/x show " "vm0 vm-db"
grep -qx -- "--bus-address unix:path=/x list -q" "$work/calls" || { echo "FAIL: list -q was called as: $(cat "$work/calls")"; failures=$((failures + 1)); }

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all completions as expected"
