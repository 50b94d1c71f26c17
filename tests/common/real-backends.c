/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proto/vhost-user-transport.h"
#include "tests/common/clock.h"
#include "tests/common/real-backends.h"

bool backend_available(const char *bin) {
        return access(bin, X_OK) == 0;
}

void real_backend_init(struct real_backend *b) {
        memset(b, 0, sizeof(*b));
        b->pid = -1;
        b->stdin_fd = -1;
        b->listen_fd = -1;
}

/*
 * The back-end's directory: a fresh private one (dir NULL), or `dir` itself,
 * made again if it is gone, for a back-end restarted at the same path.
 */
static int make_dir(struct real_backend *b, const char *tag, const char *dir) {
        real_backend_init(b);
        bool made;
        if (dir) {
                snprintf(b->dir, sizeof(b->dir), "%s", dir);
                made = mkdir(b->dir, 0700) == 0 || errno == EEXIST;
        } else {
                snprintf(b->dir, sizeof(b->dir), "/tmp/vhostmig-%s-XXXXXX", tag);
                made = mkdtemp(b->dir) != NULL;
        }
        if (!made) {
                int r = -errno;
                real_backend_init(b);
                return r;
        }
        snprintf(b->socket, sizeof(b->socket), "%s/sock", b->dir);
        snprintf(b->log, sizeof(b->log), "%s/log", b->dir);
        snprintf(b->socket2, sizeof(b->socket2), "%s/sock2", b->dir);
        return 0;
}

/* Forks and execs argv with stdin from a pipe we keep and output to the log. */
static int spawn(struct real_backend *b, char *const argv[]) {
        int in[2];
        if (pipe2(in, O_CLOEXEC) < 0)
                return -errno;
        pid_t pid = fork();
        if (pid < 0) {
                int r = -errno;
                close(in[0]);
                close(in[1]);
                return r;
        }
        if (pid == 0) {
                int log = open(b->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (log < 0 || dup2(in[0], 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
                        _exit(127);
                execv(argv[0], argv);
                _exit(127);
        }
        close(in[0]);
        b->pid = pid;
        b->stdin_fd = in[1];
        return 0;
}

/* Waits until the back-end's log contains `needle`. */
static int wait_for_log(struct real_backend *b, const char *needle, unsigned timeout_ms) {
        for (unsigned waited = 0; waited < timeout_ms; waited += 20) {
                FILE *f = fopen(b->log, "re");
                if (f) {
                        char line[512];
                        bool found = false;
                        while (!found && fgets(line, sizeof(line), f))
                                found = strstr(line, needle) != NULL;
                        fclose(f);
                        if (found)
                                return 0;
                }
                if (waitpid(b->pid, NULL, WNOHANG) == b->pid) {
                        b->pid = -1;
                        return -ECHILD;
                }
                sleep_ms(20);
        }
        fprintf(stderr, "back-end log never said \"%s\"\n", needle);
        return -ETIMEDOUT;
}

static int wait_for_socket(struct real_backend *b, unsigned timeout_ms) {
        for (unsigned waited = 0; waited < timeout_ms; waited += 20) {
                struct stat st;
                if (stat(b->socket, &st) == 0 && S_ISSOCK(st.st_mode))
                        return 0;
                if (waitpid(b->pid, NULL, WNOHANG) == b->pid) {
                        b->pid = -1;
                        fprintf(stderr, "back-end exited before creating %s; its log:\n", b->socket);
                        char cmd[192];
                        snprintf(cmd, sizeof(cmd), "tail -20 %s >&2", b->log);
                        if (system(cmd) != 0)
                                fprintf(stderr, "(no log)\n");
                        return -ECHILD;
                }
                sleep_ms(20);
        }
        return -ETIMEDOUT;
}

int start_testpmd_at(struct real_backend *b, const char *dir, unsigned queues, unsigned flags) {
        int r = make_dir(b, "testpmd", dir);
        if (r < 0)
                return r;
        bool client = flags & TESTPMD_CLIENT;
        if (client && (flags & TESTPMD_TWO_PORTS)) {
                stop_backend(b);
                return -EINVAL;
        }
        if (client) {
                b->listen_fd = vhu_socket_listen(b->socket);
                if (b->listen_fd < 0) {
                        r = b->listen_fd;
                        stop_backend(b);
                        return r;
                }
        }
        char vdev[256], vdev2[256], rxq[32], txq[32];
        snprintf(vdev, sizeof(vdev), "net_vhost0,iface=%s,queues=%u%s", b->socket, queues, client ? ",client=1" : "");
        /* The file prefix keeps concurrent testpmd instances' runtime files apart. */
        snprintf(b->dpdk_prefix, sizeof(b->dpdk_prefix), "vhostmig%d", (int) getpid());
        snprintf(rxq, sizeof(rxq), "--rxq=%u", queues);
        snprintf(txq, sizeof(txq), "--txq=%u", queues);
        char *argv[32];
        unsigned n = 0;
#define ARG(x) argv[n++] = (char *) (x)
        /* Line-buffered output, so the log shows when forwarding has started. */
        ARG("/usr/bin/stdbuf");
        ARG("-oL");
        ARG(TESTPMD_BIN);
        ARG("--no-huge");
        ARG("-m");
        ARG("1024");
        ARG("--no-pci");
        ARG("--file-prefix");
        ARG(b->dpdk_prefix);
        ARG("--vdev");
        ARG(vdev);
        if (flags & TESTPMD_TWO_PORTS) {
                snprintf(vdev2, sizeof(vdev2), "net_vhost1,iface=%s,queues=%u", b->socket2, queues);
                ARG("--vdev");
                ARG(vdev2);
        }
        if (flags & TESTPMD_NULL_PORT) {
                /* io forwarding between the vhost port and a null port: a receive-ring flood. */
                ARG("--vdev");
                ARG("net_null0");
                ARG("--");
                ARG("--forward-mode=io");
                ARG("--port-topology=paired");
        } else {
                /* macswap on one looped port: every frame comes back to its sender. */
                ARG("--");
                ARG("--forward-mode=macswap");
                ARG("--port-topology=loop");
        }
        ARG("--no-mlockall");
        ARG("--total-num-mbufs=8192");
        ARG(rxq);
        ARG(txq);
        ARG("-a");
        ARG(NULL);
#undef ARG
        r = spawn(b, argv);
        if (r == 0 && !client)
                r = wait_for_socket(b, 20000);
        /*
         * The socket exists before the port is started: a front-end that
         * connects in between races testpmd's start-up, and now and then the
         * port then never forwards.  Wait until it announces forwarding.
         */
        if (r == 0 && !client)
                r = wait_for_log(b, "Press enter to exit", 20000);
        if (r < 0)
                stop_backend(b);
        return r;
}

int start_testpmd(struct real_backend *b, unsigned queues, unsigned flags) {
        return start_testpmd_at(b, NULL, queues, flags);
}

int start_virtiofsd_at(struct real_backend *b, const char *dir) {
        int r = make_dir(b, "virtiofsd", dir);
        if (r < 0)
                return r;
        char shared[96], sock_arg[160], src_arg[128];
        snprintf(shared, sizeof(shared), "%s/shared", b->dir);
        if (mkdir(shared, 0755) < 0 && errno != EEXIST) {
                r = -errno;
                stop_backend(b);
                return r;
        }
        snprintf(sock_arg, sizeof(sock_arg), "--socket-path=%s", b->socket);
        snprintf(src_arg, sizeof(src_arg), "source=%s", shared);
        char *argv[] = { VIRTIOFSD_BIN, sock_arg, "-o", src_arg, "-o", "cache=none", NULL };
        r = spawn(b, argv);
        if (r == 0)
                r = wait_for_socket(b, 10000);
        if (r < 0)
                stop_backend(b);
        return r;
}

int start_virtiofsd(struct real_backend *b) {
        return start_virtiofsd_at(b, NULL);
}

bool backend_exited(struct real_backend *b, unsigned timeout_ms) {
        if (b->pid < 0)
                return true;
        for (unsigned waited = 0; waited <= timeout_ms; waited += 10) {
                if (waitpid(b->pid, NULL, WNOHANG) == b->pid) {
                        b->pid = -1;
                        return true;
                }
                sleep_ms(10);
        }
        return false;
}

void stop_backend(struct real_backend *b) {
        if (b->pid > 0) {
                kill(b->pid, SIGTERM);
                if (!backend_exited(b, 10000)) {
                        kill(b->pid, SIGKILL);
                        waitpid(b->pid, NULL, 0);
                }
                b->pid = -1;
        }
        if (b->stdin_fd >= 0) {
                close(b->stdin_fd);
                b->stdin_fd = -1;
        }
        if (b->listen_fd >= 0) {
                close(b->listen_fd);
                b->listen_fd = -1;
        }
        if (b->dpdk_prefix[0]) {
                /* testpmd leaves its runtime directory behind even on a clean exit. */
                char cmd[128];
                snprintf(cmd, sizeof(cmd), "rm -rf /var/run/dpdk/%s", b->dpdk_prefix);
                if (system(cmd) != 0)
                        fprintf(stderr, "could not remove /var/run/dpdk/%s\n", b->dpdk_prefix);
                b->dpdk_prefix[0] = '\0';
        }
        if (b->dir[0]) {
                char path[160];
                unlink(b->socket);
                unlink(b->socket2);
                unlink(b->log);
                snprintf(path, sizeof(path), "%s/shared", b->dir);
                rmdir(path);
                rmdir(b->dir);
                b->dir[0] = '\0';
        }
}

/* ---- keeping off testpmd's forwarding core ---------------------------------------- */

static cpu_set_t all_cpus;
static bool all_cpus_saved;

int testpmd_cpus_init(void) {
        if (sched_getaffinity(0, sizeof(all_cpus), &all_cpus) < 0)
                return -errno;
        all_cpus_saved = true;
        return 0;
}

int testpmd_cpus_avoid_worker(void) {
        if (!all_cpus_saved)
                return -EINVAL;
        cpu_set_t s = all_cpus;
        int seen = 0;
        for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
                if (CPU_ISSET(cpu, &s) && ++seen == 2) {
                        CPU_CLR(cpu, &s);
                        break;
                }
        if (seen == 2 && sched_setaffinity(0, sizeof(s), &s) < 0)
                return -errno;
        return 0;
}

int testpmd_cpus_restore(void) {
        if (!all_cpus_saved)
                return -EINVAL;
        if (sched_setaffinity(0, sizeof(all_cpus), &all_cpus) < 0)
                return -errno;
        return 0;
}
