/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The journal's MESSAGE_ID of each event vhostmigd reports, so that
 * `journalctl MESSAGE_ID=...` finds every VM created, every peer refused.
 * The catalog (vhostmig.catalog) explains each one; keep the two in step.
 */
#pragma once

#define VHOSTMIG_MESSAGE_VM_CREATED          "4434f6e1efde4571bc86a48a02044c2a"
#define VHOSTMIG_MESSAGE_VM_DESTROYED        "fa44218fb1674666968240d9617cd651"
#define VHOSTMIG_MESSAGE_DEVICE_CONNECTED    "f2b780e07d8d4b64bd614e136085f9e3"
#define VHOSTMIG_MESSAGE_DEVICE_DISCONNECTED "c617a771c9164e98a6365571bbbd33e4"
#define VHOSTMIG_MESSAGE_DEVICE_RECONNECTED  "ea2857d8ae324c2293cf38e340a74961"
#define VHOSTMIG_MESSAGE_PEER_REFUSED        "7bd62246a3d14133a08bfd9eb4206dd4"
#define VHOSTMIG_MESSAGE_LOGGING_STARTED     "9fdabc6d6dfb4f2483bdf25aaf66fe7e"
#define VHOSTMIG_MESSAGE_LOGGING_STOPPED     "344cc3bc7fd04e7188b8db5520bf3022"
#define VHOSTMIG_MESSAGE_MIGRATION_BLOCKED   "d3bb8d1ee362444a925c0b30b4dc0ef2"
#define VHOSTMIG_MESSAGE_MIGRATION_UNBLOCKED "b5df3dc2f63e42528f114455d06e0c56"
