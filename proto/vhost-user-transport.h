/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Moving vhost-user messages over a Unix stream socket: SCM_RIGHTS, partial
 * reads and writes, EINTR, deadlines.  Sockets are non-blocking; whenever a
 * call would block it asks a wait function, so a caller can plug in its own
 * (an event loop, a poll on several fds) instead of a plain poll().
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/vhost-user.h"

/* Monotonic clock in microseconds. */
uint64_t vhu_now_usec(void);
/* Deadline `timeout_ms` from now; 0 means "no deadline" (UINT64_MAX). */
uint64_t vhu_deadline_after_ms(unsigned timeout_ms);

/*
 * Waits until `fd` is ready for `events` (POLLIN/POLLOUT) or the deadline
 * passes.  Returns 0 when ready, -ETIMEDOUT, or another negative errno.
 */
typedef int (*vhu_wait_fn)(void *userdata, int fd, short events, uint64_t deadline_usec);

struct vhu_io {
        vhu_wait_fn wait;
        void *userdata;
};

/*
 * poll() until something is ready or the deadline passes, through EINTR.
 * Returns the number of ready fds, -ETIMEDOUT, or another negative errno.
 */
struct pollfd;
int vhu_poll_until(struct pollfd *pfds, unsigned n, uint64_t deadline_usec);

/* The default wait: poll() on the one fd. */
int vhu_wait_poll(void *userdata, int fd, short events, uint64_t deadline_usec);

/* Sends the header, `hdr.size` payload bytes and the fds in one sendmsg (then the rest). */
int vhu_send_msg(int sock, const struct vhu_msg *msg, const struct vhu_io *io, uint64_t deadline_usec);

/*
 * Receives a header and any fds that came with it.  At most VHU_MAX_FDS fds
 * are kept; a message that carried more has them all closed and the call
 * fails with -EMSGSIZE.  -ECONNRESET when the peer closed.
 */
int vhu_recv_hdr(int sock, struct vhu_msg *msg, const struct vhu_io *io, uint64_t deadline_usec);

/*
 * Receives `msg->hdr.size` payload bytes; the caller must have checked the
 * size against the payload union first.  Fds that arrive with the payload are
 * appended to msg->fds under the same limit.
 */
int vhu_recv_payload(int sock, struct vhu_msg *msg, const struct vhu_io *io, uint64_t deadline_usec);

/* Closes every fd in msg and forgets them. */
void vhu_msg_close_fds(struct vhu_msg *msg);

/* How long vhu_socket_connect() keeps trying a listener whose backlog is full. */
#define VHU_CONNECT_TIMEOUT_MS 5000u

/*
 * Client side: a non-blocking, close-on-exec connected socket, or a negative
 * errno.  The connect itself never blocks: a listener whose backlog is full
 * (Linux answers EAGAIN) is retried with short sleeps until the deadline,
 * then -ETIMEDOUT.  -ENOENT / -ECONNREFUSED when nobody listens.
 */
int vhu_socket_connect_until(const char *path, uint64_t deadline_usec);
/* The same with a deadline VHU_CONNECT_TIMEOUT_MS from now. */
int vhu_socket_connect(const char *path);

/*
 * Server side: a listening socket at `path`.  A stale socket file left by a
 * dead process is replaced; a socket somebody still listens on (even one
 * that never accepts) is refused with -EADDRINUSE and left alone; any other
 * existing file is refused (-EEXIST).  The check never blocks.
 */
int vhu_socket_listen(const char *path);

/* The socket file's mode and group; applied before listen(), so nobody connects earlier. */
struct vhu_listen_options {
        mode_t mode; /* permission bits; 0 = as created under the umask */
        gid_t gid;   /* (gid_t) -1 = unchanged */
};

/* Identity of the socket file a listener created, to remove only that file later. */
struct vhu_socket_file {
        dev_t dev;
        ino_t ino;
        bool valid;
};

/*
 * vhu_socket_listen() with options (NULL: none) and, in *file (NULL: not
 * wanted), the identity of the socket file created.
 */
int vhu_socket_listen_ex(const char *path, const struct vhu_listen_options *opts, struct vhu_socket_file *file);

/*
 * Unlinks path only when it still is the socket file `file` describes:
 * 0 when unlinked, -ESTALE when path is now another file (left alone),
 * -ENOENT when nothing is there, -EINVAL when file is not valid.
 */
int vhu_socket_unlink_if_same(const char *path, const struct vhu_socket_file *file);

/* The peer's credentials (SO_PEERCRED) on a connected Unix socket; any pointer may be NULL. */
int vhu_socket_peer_cred(int fd, uid_t *uid, gid_t *gid, pid_t *pid);

/* Accepts one connection within the deadline; the new socket is non-blocking. */
int vhu_socket_accept(int listen_fd, const struct vhu_io *io, uint64_t deadline_usec);

/* Makes fd non-blocking and close-on-exec. */
int vhu_fd_prepare(int fd);
