/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Restart without disturbing running VMs: what vhostmigd keeps in systemd's
 * file descriptor store (sd_pid_notify_with_fds, FDSTORE=1) so that a new
 * process, after a crash or an upgrade, finds every fd it cannot recreate
 * (guest memory, eventfds, back-end connections, logs) and a small state
 * describing them.
 *
 * The fds go into the store under stable names (state_store_fd_name: no
 * ':', no whitespace, at most 255 bytes, as sd_pid_notify needs).  The state
 * is a JSON document in an envelope with a format version, a generation and
 * a checksum of the body, written to a memfd sealed against every change and
 * kept under one of two names ("state.a", "state.b") in turn: the new one is
 * stored before the old one is removed, so a crash in between leaves two
 * valid states and the higher generation wins.
 *
 * The body names every fd it relies on, with its kind ("fds": {name: kind}),
 * so that a restart can check each one before trusting any of it; fds it can
 * do without ("optional_fds": {name: kind}, a back-end connection say) are
 * checked when they are there.
 *
 * Without NOTIFY_SOCKET and $FDSTORE (the number of fds the manager keeps,
 * set by systemd 254 and later, or by the unit; not started by systemd or a
 * supervisor speaking its protocol) a store is disabled and every call
 * returns 0 at once.
 */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#define STATE_STORE_FORMAT   "vhostmigd-state"
#define STATE_STORE_VERSION  2 /* 2: regions carry the back-ends' uaddr; LogSwitchLocked; logs kept ahead */
#define STATE_STORE_NAME_MAX 255
#define STATE_STORE_SLOT_A   "state.a"
#define STATE_STORE_SLOT_B   "state.b"
/* A state larger than this is not ours (the body describes fds, never guest memory). */
#define STATE_STORE_MAX_STATE    (4u << 20)
#define STATE_STORE_KIND_MEMFD   "memfd"       /* a memfd sealed against shrinking (guest memory, logs, bitmaps) */
#define STATE_STORE_KIND_FILE    "file"        /* a regular file (hugetlbfs, tmpfs guest memory) */
#define STATE_STORE_KIND_EVENTFD "eventfd"     /* kick and call eventfds */
#define STATE_STORE_KIND_UNIX    "unix-stream" /* back-end connections and channels, listening sockets */

struct state_store;

/* Enabled when NOTIFY_SOCKET is set and $FDSTORE is a positive number. */
int state_store_new(struct state_store **out);
void state_store_free(struct state_store *s);
bool state_store_enabled(const struct state_store *s);

/*
 * An fd name from printf-style parts; -ENAMETOOLONG or -EINVAL (a ':' or a
 * character other than printable ASCII without spaces) when sd_pid_notify
 * could not carry it.
 */
__attribute__((format(printf, 3, 4))) int state_store_fd_name(char *buf, size_t len, const char *fmt, ...);

/* FDSTORE=1 with FDNAME=name: the store keeps (a duplicate of) fd. */
int state_store_keep_fd(struct state_store *s, const char *name, int fd);
/* FDSTOREREMOVE=1 with FDNAME=name: the store closes what it kept under that name. */
int state_store_forget_fd(struct state_store *s, const char *name);

/*
 * Replaces the stored state: body (not consumed) serialized, wrapped in the
 * envelope, written to a sealed memfd, stored under the other slot name,
 * then the previous slot removed.  body must hold "fds": {name: kind}.
 */
int state_store_publish(struct state_store *s, json_object *body);

/* What a restart found, verified. */
struct state_restored;

/*
 * Takes over the fds the store passed (sd_listen_fds_with_names, LISTEN_*
 * unset afterwards) and verifies the state among them.
 *   0, *out NULL: nothing was stored (a first start);
 *   0, *out set: the state and every fd it names are there and of their kind;
 *   < 0: refused, with one line saying why in `why`: every passed fd is
 *        closed and removed from the store (back-end connections end
 *        cleanly rather than being half used).
 * state_store_restore_fds does the same for fds and names the caller holds
 * (it takes the fds in every case, and copies the names).
 */
int state_store_restore(struct state_store *s, struct state_restored **out, char *why, size_t why_len);
int state_store_restore_fds(struct state_store *s, int *fds, char **names, size_t n, struct state_restored **out,
                            char *why, size_t why_len);

/* The verified body (the restored state keeps it). */
json_object *state_restored_body(const struct state_restored *r);
uint64_t state_restored_generation(const struct state_restored *r);
/* The fd stored under name, now the caller's; -ENOENT when none (or taken already). */
int state_restored_take_fd(struct state_restored *r, const char *name);
/*
 * Any fd not taken yet whose name is prefix followed by a number only (the
 * unique number ending a name): now the caller's, its name copied to name;
 * -ENOENT when none is left.  For fds kept ahead of the state that would
 * name them (a write-ahead), which the state's "fds" cannot list.
 */
int state_restored_take_numbered(struct state_restored *r, const char *prefix, char *name, size_t name_len);
/*
 * Done with it: every fd not taken is closed and removed from the store
 * (nothing refers to it any more); the state stays stored until the next
 * state_store_publish replaces it.
 */
void state_restored_free(struct state_store *s, struct state_restored *r);
/*
 * Gives up a verified state after all (the daemon could not rebuild from
 * it): every fd not taken closed and removed from the store, the state slots too.
 */
void state_restored_abandon(struct state_store *s, struct state_restored *r);
