/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Serving loops, child processes and reading the record back. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/vhost-user-transport.h"
#include "tests/backend/tb-internal.h"

#define CONNECT_RETRY_MS 20
#define STOP_GRACE_MS    2000
/* no_accept: more than enough of our own connections to fill a backlog of 0. */
#define MAX_BACKLOG_FILL 64

static void sleep_ms(unsigned ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static void report_ready(tb_ready_fn ready, void *userdata, int status) {
        if (ready)
                ready(userdata, status);
}

int tb_drop_privileges(const struct tb_config *cfg) {
        int pdeath = 0;
        if (cfg->run_as_uid == (uid_t) -1 && cfg->run_as_gid == (gid_t) -1)
                return 0;
        if (prctl(PR_GET_PDEATHSIG, &pdeath) < 0)
                pdeath = 0;
        if (setgroups(0, NULL) < 0)
                return -errno;
        if (cfg->run_as_gid != (gid_t) -1 && setresgid(cfg->run_as_gid, cfg->run_as_gid, cfg->run_as_gid) < 0)
                return -errno;
        if (cfg->run_as_uid != (uid_t) -1 && setresuid(cfg->run_as_uid, cfg->run_as_uid, cfg->run_as_uid) < 0)
                return -errno;
        /* A change of credentials cleared it. */
        if (pdeath > 0 && prctl(PR_SET_PDEATHSIG, pdeath) < 0)
                return -errno;
        return 0;
}

/* One non-blocking connection of our own to path: its fd, -EAGAIN when the backlog is full, or -errno. */
static int connect_own(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

/*
 * no_accept: the smallest backlog, filled with our own connections, and
 * never an accept(), so that the next connect() blocks (or fails with
 * EAGAIN when non-blocking).  Returns only on an error: else until killed.
 */
static int never_accept(struct tb_server *srv, int lfd, const char *path, tb_ready_fn ready, void *userdata) {
        int own[MAX_BACKLOG_FILL];
        unsigned n = 0;
        int r = listen(lfd, 0) < 0 ? -errno : 0;
        while (r == 0 && n < MAX_BACKLOG_FILL) {
                int fd = connect_own(path);
                if (fd == -EAGAIN)
                        break;
                if (fd < 0)
                        r = fd;
                else
                        own[n++] = fd;
        }
        if (r == 0 && n == MAX_BACKLOG_FILL)
                r = -EOVERFLOW;
        if (r < 0) {
                for (unsigned i = 0; i < n; i++)
                        close(own[i]);
                report_ready(ready, userdata, r);
                return r;
        }
        tb_record(srv, "NO_ACCEPT backlog=%u", n);
        report_ready(ready, userdata, 0);
        for (;;)
                pause();
}

int tb_run_listen(const struct tb_config *cfg, const char *path, tb_ready_fn ready, void *userdata) {
        struct tb_server srv;
        int r = tb_server_init(&srv, cfg);
        if (r == 0)
                r = tb_drop_privileges(cfg);
        if (r < 0) {
                report_ready(ready, userdata, r);
                tb_server_fini(&srv);
                return r;
        }
        int lfd = vhu_socket_listen(path);
        if (lfd < 0) {
                report_ready(ready, userdata, lfd);
                tb_server_fini(&srv);
                return lfd;
        }
        if (cfg->no_accept) {
                r = never_accept(&srv, lfd, path, ready, userdata);
                close(lfd);
                unlink(path);
                tb_server_fini(&srv);
                return r;
        }
        report_ready(ready, userdata, 0);
        r = 0;
        for (unsigned n = 0; cfg->max_connections == 0 || n < cfg->max_connections; n++) {
                int fd = vhu_socket_accept(lfd, NULL, UINT64_MAX);
                if (fd < 0) {
                        r = fd;
                        break;
                }
                tb_server_serve(&srv, fd);
        }
        close(lfd);
        unlink(path);
        tb_server_fini(&srv);
        return r;
}

/* Connects, retrying while nobody listens yet, until the deadline. */
static int connect_retry(const char *path, uint64_t deadline) {
        for (;;) {
                int fd = vhu_socket_connect(path);
                if (fd >= 0)
                        return fd;
                if ((fd != -ENOENT && fd != -ECONNREFUSED && fd != -EAGAIN) || vhu_now_usec() >= deadline)
                        return fd;
                sleep_ms(CONNECT_RETRY_MS);
        }
}

int tb_run_connect(const struct tb_config *cfg, const char *path, tb_ready_fn ready, void *userdata) {
        struct tb_server srv;
        /* Listening without accepting needs a listener. */
        int r = cfg->no_accept ? -EINVAL : tb_server_init(&srv, cfg);
        if (r == 0)
                r = tb_drop_privileges(cfg);
        if (r < 0) {
                report_ready(ready, userdata, r);
                if (!cfg->no_accept)
                        tb_server_fini(&srv);
                return r;
        }
        r = 0;
        for (unsigned n = 0; cfg->max_connections == 0 || n < cfg->max_connections; n++) {
                /* The first connection must come within the timeout; reconnections wait longer, as OVS does. */
                int fd = connect_retry(path,
                                       vhu_deadline_after_ms(n == 0 ? cfg->io_timeout_ms : cfg->reconnect_timeout_ms));
                if (n == 0)
                        report_ready(ready, userdata, fd < 0 ? fd : 0);
                if (fd < 0) {
                        r = fd;
                        break;
                }
                tb_server_serve(&srv, fd);
        }
        tb_server_fini(&srv);
        return r;
}

/* ---------------------------------------------------------------- children */

static const char *volatile child_socket_path;

static void on_term(int sig) {
        (void) sig;
        if (child_socket_path)
                unlink(child_socket_path);
        _exit(0);
}

static void ready_to_pipe(void *userdata, int status) {
        int *fd = userdata;
        if (*fd < 0)
                return;
        ssize_t n;
        do
                n = write(*fd, &status, sizeof(status));
        while (n < 0 && errno == EINTR);
        close(*fd);
        *fd = -1;
}

/* In the child: only stdio and the readiness pipe stay open. */
static int child_setup(int pipe_fd, pid_t parent, const char *unlink_path) {
        int keep = fcntl(pipe_fd, F_DUPFD_CLOEXEC, 3);
        if (keep < 0)
                _exit(3);
        if (keep > 3)
                close_range(3, (unsigned) keep - 1, 0);
        close_range((unsigned) keep + 1, ~0u, 0);

        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        struct sigaction sa = { .sa_handler = on_term };
        sigemptyset(&sa.sa_mask);
        child_socket_path = unlink_path;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        /* Die with the test that started us. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
                _exit(0);
        return keep;
}

static int spawn(const struct tb_config *cfg, const char *path, bool client, pid_t *pidp) {
        int p[2];
        const char *why;

        if (tb_config_check(cfg, &why) < 0 || !path)
                return -EINVAL;
        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) {
                int r = -errno;
                close(p[0]);
                close(p[1]);
                return r;
        }
        if (pid == 0) {
                int fd = child_setup(p[1], parent, client ? NULL : path);
                int r = client ? tb_run_connect(cfg, path, ready_to_pipe, &fd)
                               : tb_run_listen(cfg, path, ready_to_pipe, &fd);
                ready_to_pipe(&fd, r < 0 ? r : -EIO);
                _exit(r < 0 ? 1 : 0);
        }

        close(p[1]);
        int status = 0;
        ssize_t n;
        do
                n = read(p[0], &status, sizeof(status));
        while (n < 0 && errno == EINTR);
        close(p[0]);
        if (n != (ssize_t) sizeof(status) || status < 0) {
                waitpid(pid, NULL, 0);
                return n == (ssize_t) sizeof(status) ? status : -ECHILD;
        }
        *pidp = pid;
        return 0;
}

int tb_spawn_listen(const struct tb_config *cfg, const char *path, pid_t *pid) {
        return spawn(cfg, path, false, pid);
}

int tb_spawn_connect(const struct tb_config *cfg, const char *path, pid_t *pid) {
        return spawn(cfg, path, true, pid);
}

int tb_wait_exit(pid_t pid, unsigned timeout_ms) {
        uint64_t deadline = vhu_deadline_after_ms(timeout_ms);
        for (;;) {
                int status;
                pid_t r = waitpid(pid, &status, WNOHANG);
                if (r == pid)
                        return status;
                if (r < 0 && errno != EINTR)
                        return -errno;
                if (vhu_now_usec() >= deadline)
                        return -ETIMEDOUT;
                sleep_ms(5);
        }
}

int tb_stop(pid_t pid) {
        if (pid <= 0)
                return -EINVAL;
        if (kill(pid, SIGTERM) < 0 && errno != ESRCH)
                return -errno;
        int status = tb_wait_exit(pid, STOP_GRACE_MS);
        if (status != -ETIMEDOUT)
                return status;
        kill(pid, SIGKILL);
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return status;
}

/* ---------------------------------------------------------------- record reading */

char *tb_record_read(const char *path) {
        FILE *f = fopen(path, "re");
        if (!f)
                return NULL;
        size_t cap = 4096, len = 0;
        char *buf = malloc(cap);
        while (buf) {
                size_t n = fread(buf + len, 1, cap - len - 1, f);
                len += n;
                if (len + 1 < cap)
                        break;
                char *bigger = realloc(buf, cap * 2);
                if (!bigger) {
                        free(buf);
                        buf = NULL;
                        break;
                }
                buf = bigger;
                cap *= 2;
        }
        fclose(f);
        if (buf)
                buf[len] = '\0';
        return buf;
}

int tb_record_count(const char *path, const char *prefix) {
        char *text = tb_record_read(path);
        if (!text)
                return 0;
        int count = 0;
        size_t plen = strlen(prefix);
        for (char *line = text; line && *line;) {
                char *nl = strchr(line, '\n');
                if (nl)
                        *nl = '\0';
                if (strncmp(line, prefix, plen) == 0)
                        count++;
                line = nl ? nl + 1 : NULL;
        }
        free(text);
        return count;
}

bool tb_record_contains(const char *path, const char *needle) {
        char *text = tb_record_read(path);
        bool found = text && strstr(text, needle);
        free(text);
        return found;
}
