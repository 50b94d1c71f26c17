/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proto/vhost-user-transport.h"

uint64_t vhu_now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

uint64_t vhu_deadline_after_ms(unsigned timeout_ms) {
        if (timeout_ms == 0)
                return UINT64_MAX;
        return vhu_now_usec() + (uint64_t) timeout_ms * 1000u;
}

static int remaining_ms(uint64_t deadline_usec) {
        if (deadline_usec == UINT64_MAX)
                return -1;
        uint64_t now = vhu_now_usec();
        if (now >= deadline_usec)
                return 0;
        uint64_t ms = (deadline_usec - now + 999) / 1000;
        return ms > INT32_MAX ? INT32_MAX : (int) ms;
}

int vhu_poll_until(struct pollfd *pfds, unsigned n, uint64_t deadline_usec) {
        for (;;) {
                int r = poll(pfds, n, remaining_ms(deadline_usec));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        return -errno;
                return r == 0 ? -ETIMEDOUT : r;
        }
}

int vhu_wait_poll(void *userdata, int fd, short events, uint64_t deadline_usec) {
        (void) userdata;
        struct pollfd pfd = { .fd = fd, .events = events };
        /* POLLHUP/POLLERR count as ready: the following read or write reports them. */
        int r = vhu_poll_until(&pfd, 1, deadline_usec);
        return r < 0 ? r : 0;
}

static int io_wait(const struct vhu_io *io, int fd, short events, uint64_t deadline_usec) {
        if (io && io->wait)
                return io->wait(io->userdata, fd, events, deadline_usec);
        return vhu_wait_poll(NULL, fd, events, deadline_usec);
}

void vhu_msg_close_fds(struct vhu_msg *msg) {
        for (unsigned i = 0; i < msg->nfds; i++)
                if (msg->fds[i] >= 0)
                        close(msg->fds[i]);
        msg->nfds = 0;
}

int vhu_send_msg(int sock, const struct vhu_msg *msg, const struct vhu_io *io, uint64_t deadline_usec) {
        if (msg->nfds > VHU_MAX_FDS || msg->hdr.size > sizeof(msg->payload))
                return -EINVAL;

        struct iovec iov[2] = {
                { .iov_base = (void *) &msg->hdr, .iov_len = sizeof(msg->hdr) },
                { .iov_base = (void *) &msg->payload, .iov_len = msg->hdr.size },
        };
        union {
                char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
                struct cmsghdr align;
        } control;
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = msg->hdr.size ? 2 : 1 };
        bool fds_pending = msg->nfds > 0;

        if (fds_pending) {
                memset(&control, 0, sizeof(control));
                mh.msg_control = control.buf;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * msg->nfds);
                struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int) * msg->nfds);
                memcpy(CMSG_DATA(cm), msg->fds, sizeof(int) * msg->nfds);
        }

        size_t total = sizeof(msg->hdr) + msg->hdr.size, sent = 0;
        while (sent < total) {
                ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                int r = io_wait(io, sock, POLLOUT, deadline_usec);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        return errno == EPIPE ? -ECONNRESET : -errno;
                }
                /* The fds went with the first byte; never send them twice. */
                mh.msg_control = NULL;
                mh.msg_controllen = 0;
                sent += (size_t) n;
                while (n > 0 && mh.msg_iovlen > 0) {
                        size_t step = (size_t) n < mh.msg_iov->iov_len ? (size_t) n : mh.msg_iov->iov_len;
                        mh.msg_iov->iov_base = (char *) mh.msg_iov->iov_base + step;
                        mh.msg_iov->iov_len -= step;
                        n -= (ssize_t) step;
                        if (mh.msg_iov->iov_len == 0) {
                                mh.msg_iov++;
                                mh.msg_iovlen--;
                        }
                }
        }
        return 0;
}

/* Takes the fds out of a received control message; extra ones are closed. */
static int collect_fds(struct msghdr *mh, struct vhu_msg *msg) {
        int r = 0;

        for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < n; i++) {
                        int fd;
                        memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
                        if (msg->nfds < VHU_MAX_FDS)
                                msg->fds[msg->nfds++] = fd;
                        else {
                                close(fd);
                                r = -EMSGSIZE;
                        }
                }
        }
        if (mh->msg_flags & MSG_CTRUNC)
                r = -EMSGSIZE;
        return r;
}

static int recv_bytes(int sock, void *buf, size_t len, struct vhu_msg *msg, const struct vhu_io *io,
                      uint64_t deadline_usec) {
        size_t got = 0;
        int fd_error = 0;

        while (got < len) {
                union {
                        char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
                        struct cmsghdr align;
                } control;
                struct iovec iov = { .iov_base = (char *) buf + got, .iov_len = len - got };
                struct msghdr mh = {
                        .msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = control.buf,
                        .msg_controllen = sizeof(control.buf),
                };
                ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                int r = io_wait(io, sock, POLLIN, deadline_usec);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        return -errno;
                }
                int r = collect_fds(&mh, msg);
                if (r < 0)
                        fd_error = r;
                if (n == 0)
                        return -ECONNRESET;
                got += (size_t) n;
        }
        return fd_error;
}

int vhu_recv_hdr(int sock, struct vhu_msg *msg, const struct vhu_io *io, uint64_t deadline_usec) {
        msg->nfds = 0;
        int r = recv_bytes(sock, &msg->hdr, sizeof(msg->hdr), msg, io, deadline_usec);
        if (r < 0)
                vhu_msg_close_fds(msg);
        return r;
}

int vhu_recv_payload(int sock, struct vhu_msg *msg, const struct vhu_io *io, uint64_t deadline_usec) {
        if (msg->hdr.size > sizeof(msg->payload))
                return -EMSGSIZE;
        if (msg->hdr.size == 0)
                return 0;
        int r = recv_bytes(sock, &msg->payload, msg->hdr.size, msg, io, deadline_usec);
        if (r < 0)
                vhu_msg_close_fds(msg);
        return r;
}

int vhu_fd_prepare(int fd) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return -errno;
        flags = fcntl(fd, F_GETFD);
        if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
                return -errno;
        return 0;
}

static int fill_sockaddr(const char *path, struct sockaddr_un *sa) {
        if (!path || !*path)
                return -EINVAL;
        size_t len = strlen(path);
        if (len >= sizeof(sa->sun_path))
                return -ENAMETOOLONG;
        memset(sa, 0, sizeof(*sa));
        sa->sun_family = AF_UNIX;
        memcpy(sa->sun_path, path, len + 1);
        return 0;
}

/* Longest pause between two attempts on a full backlog: a listener that accepts again is reached soon. */
#define CONNECT_RETRY_MAX_MS 20u

/*
 * One non-blocking connect on a fresh socket: the connected fd, or a negative
 * errno; -EAGAIN when the listener's backlog is full (Linux does not queue a
 * non-blocking Unix connect, it refuses it).
 */
static int connect_once(const struct sockaddr_un *sa) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (const struct sockaddr *) sa, sizeof(*sa)) == 0)
                return fd;
        int r = errno == EINTR || errno == EINPROGRESS ? -EAGAIN : -errno;
        close(fd);
        return r;
}

/* Sleeps `ms`, or less when the deadline comes first. */
static void pause_until(uint64_t deadline_usec, unsigned ms) {
        int left = remaining_ms(deadline_usec);
        if (left < 0 || (unsigned) left > ms)
                left = (int) ms;
        (void) poll(NULL, 0, left);
}

int vhu_socket_connect_until(const char *path, uint64_t deadline_usec) {
        struct sockaddr_un sa;
        int r = fill_sockaddr(path, &sa);
        if (r < 0)
                return r;
        for (unsigned pause_ms = 1;;
             pause_ms = pause_ms * 2 > CONNECT_RETRY_MAX_MS ? CONNECT_RETRY_MAX_MS : pause_ms * 2) {
                int fd = connect_once(&sa);
                if (fd != -EAGAIN)
                        return fd;
                if (vhu_now_usec() >= deadline_usec)
                        return -ETIMEDOUT;
                pause_until(deadline_usec, pause_ms);
        }
}

int vhu_socket_connect(const char *path) {
        return vhu_socket_connect_until(path, vhu_deadline_after_ms(VHU_CONNECT_TIMEOUT_MS));
}

/*
 * A socket file nobody listens on any more may be replaced; anything else
 * stays.  One non-blocking attempt: a listener that does not accept (full
 * backlog) is alive, and the check must not wait for it.
 */
static int remove_stale_socket(const char *path, const struct sockaddr_un *sa) {
        struct stat st;
        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISSOCK(st.st_mode))
                return -EEXIST;
        int fd = connect_once(sa);
        if (fd >= 0) {
                close(fd);
                return -EADDRINUSE;
        }
        if (fd == -EAGAIN)
                return -EADDRINUSE;
        if (fd != -ECONNREFUSED)
                return fd;
        return unlink(path) < 0 ? -errno : 0;
}

static int socket_file_identity(const char *path, struct vhu_socket_file *file) {
        struct stat st;
        if (lstat(path, &st) < 0)
                return -errno;
        if (!S_ISSOCK(st.st_mode))
                return -ESTALE;
        *file = (struct vhu_socket_file){ .dev = st.st_dev, .ino = st.st_ino, .valid = true };
        return 0;
}

/* Mode and group of the bound socket file; nobody can connect before listen(). */
static int apply_listen_options(const char *path, const struct vhu_listen_options *opts) {
        if (!opts)
                return 0;
        if (opts->mode && chmod(path, opts->mode & 07777) < 0)
                return -errno;
        if (opts->gid != (gid_t) -1 && lchown(path, (uid_t) -1, opts->gid) < 0)
                return -errno;
        return 0;
}

int vhu_socket_listen_ex(const char *path, const struct vhu_listen_options *opts, struct vhu_socket_file *file) {
        struct sockaddr_un sa;
        int r = fill_sockaddr(path, &sa);
        if (r < 0)
                return r;
        r = remove_stale_socket(path, &sa);
        if (r < 0)
                return r;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        /*
         * Linux creates the file with the socket inode's mode under the
         * umask, so the file is never looser than asked, even before chmod.
         * Best effort: the chmod below, before listen(), is what counts.
         */
        if (opts && opts->mode)
                (void) fchmod(fd, opts->mode & 07777);
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        struct vhu_socket_file ours = { 0 };
        r = socket_file_identity(path, &ours);
        if (r == 0)
                r = apply_listen_options(path, opts);
        if (r == 0 && listen(fd, 4) < 0)
                r = -errno;
        if (r < 0) {
                if (ours.valid)
                        (void) vhu_socket_unlink_if_same(path, &ours);
                close(fd);
                return r;
        }
        if (file)
                *file = ours;
        return fd;
}

int vhu_socket_listen(const char *path) {
        return vhu_socket_listen_ex(path, NULL, NULL);
}

int vhu_socket_unlink_if_same(const char *path, const struct vhu_socket_file *file) {
        if (!file || !file->valid)
                return -EINVAL;
        struct stat st;
        if (lstat(path, &st) < 0)
                return -errno;
        if (st.st_dev != file->dev || st.st_ino != file->ino)
                return -ESTALE;
        return unlink(path) < 0 ? -errno : 0;
}

int vhu_socket_peer_cred(int fd, uid_t *uid, gid_t *gid, pid_t *pid) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        if (len != sizeof(cred))
                return -EIO;
        if (uid)
                *uid = cred.uid;
        if (gid)
                *gid = cred.gid;
        if (pid)
                *pid = cred.pid;
        return 0;
}

int vhu_socket_accept(int listen_fd, const struct vhu_io *io, uint64_t deadline_usec) {
        for (;;) {
                int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd >= 0)
                        return fd;
                if (errno == EINTR || errno == ECONNABORTED)
                        continue;
                if (errno != EAGAIN)
                        return -errno;
                int r = io_wait(io, listen_fd, POLLIN, deadline_usec);
                if (r < 0)
                        return r;
        }
}
