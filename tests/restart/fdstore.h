/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The service manager's half of systemd's fd store, for tests (PID 1 here
 * is not systemd): a NOTIFY_SOCKET (AF_UNIX datagram) that receives
 * FDSTORE=1 / FDSTOREREMOVE=1 with FDNAME= and the fds (SCM_RIGHTS), keeps
 * them by name as systemd does, and passes them on as the fds 3.. of a new
 * process with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define FDSTORE_MAX 1024

struct fdstore {
        int sock;
        char path[108];
        size_t n;
        int fds[FDSTORE_MAX];
        char *names[FDSTORE_MAX];
        unsigned messages, stored, removed, refused;
        unsigned ready; /* READY=1 notifications */
};

/* Binds path (removed first) and listens for notifications. */
int fdstore_open(struct fdstore *st, const char *path);
/* Closes every kept fd and the socket, removes the socket file. */
void fdstore_close(struct fdstore *st);
/* Takes in every notification waiting now, or within timeout_ms for the first; the count handled. */
int fdstore_receive(struct fdstore *st, unsigned timeout_ms);
/* How many fds are kept under name. */
unsigned fdstore_count(const struct fdstore *st, const char *name);
/* The first fd kept under name, or -1. */
int fdstore_fd(const struct fdstore *st, const char *name);
/*
 * In a child about to exec: the kept fds as 3.., LISTEN_FDS, LISTEN_FDNAMES
 * and LISTEN_PID (this process) set, NOTIFY_SOCKET pointing at the store,
 * FDSTORE its size;
 * every other fd above 2 closed.  Async-signal-safe enough for after fork()
 * in a single-threaded parent.
 */
int fdstore_pass(const struct fdstore *st);
