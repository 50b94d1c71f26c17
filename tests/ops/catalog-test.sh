#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# catalog-test.sh MESSAGES_H CATALOG
#
# Every MESSAGE_ID defined in messages.h has exactly one entry in the journal
# catalog, and every entry's ID is defined there.  Then systemd's own parser
# (journalctl --update-catalog in a scratch root) must read the catalog and
# list every ID with a subject.  Only that second part needs journalctl.
set -euo pipefail

messages=$1 catalog=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

sed -n 's/^#define VHOSTMIG_MESSAGE_[A-Z_]* *"\([0-9a-f]*\)".*/\1/p' "$messages" | sort >"$tmp/defined"
sed -n 's/^-- \([0-9a-f]*\)$/\1/p' "$catalog" | sort >"$tmp/entries"

fail=0
[ -s "$tmp/defined" ] || { echo "FAIL: no MESSAGE_ID found in $messages"; exit 1; }
if grep -Ev '^[0-9a-f]{32}$' "$tmp/defined" "$tmp/entries"; then
  echo "FAIL: the IDs above are not 128-bit lower-case hex"; fail=1
fi
for f in defined entries; do
  dups=$(uniq -d "$tmp/$f")
  [ -z "$dups" ] || { echo "FAIL: more than once in the $f IDs: $dups"; fail=1; }
done
missing=$(comm -23 "$tmp/defined" "$tmp/entries")
extra=$(comm -13 "$tmp/defined" "$tmp/entries")
[ -z "$missing" ] || { echo "FAIL: defined in $messages, no catalog entry: $missing"; fail=1; }
[ -z "$extra" ] || { echo "FAIL: catalog entry for an ID messages.h does not define: $extra"; fail=1; }
[ "$fail" -eq 0 ] || exit 1
echo "$(wc -l <"$tmp/defined") IDs, one catalog entry each"

if ! command -v journalctl >/dev/null; then
  echo "journalctl not installed: the catalog's syntax is not checked"
  exit 0
fi
mkdir -p "$tmp/root/usr/lib/systemd/catalog" "$tmp/root/var/lib/systemd/catalog"
cp "$catalog" "$tmp/root/usr/lib/systemd/catalog/vhostmig.catalog"
journalctl --root="$tmp/root" --update-catalog
journalctl --root="$tmp/root" --list-catalog >"$tmp/listed"
cat "$tmp/listed"
# "ID vhostmig: Subject": Defined-By and Subject both read.
sed -n 's/^\([0-9a-f]\{32\}\) vhostmig: ..*$/\1/p' "$tmp/listed" | sort >"$tmp/parsed"
if ! diff -u "$tmp/defined" "$tmp/parsed"; then
  echo "FAIL: journalctl did not read an entry with a subject for every ID"
  exit 1
fi
echo OK
