/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "tests/stress/stress-host.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/common/clock.h"

#define DAEMON_START_MS 10000u
#define DAEMON_STOP_MS  10000u

/* The wait status once pid exited, or -ETIMEDOUT. */
static int wait_exit(pid_t pid, unsigned timeout_ms) {
        uint64_t deadline = now_ms() + timeout_ms;
        for (;;) {
                int status;
                pid_t r = waitpid(pid, &status, WNOHANG);
                if (r == pid)
                        return status;
                if (r < 0)
                        return -errno;
                if (now_ms() >= deadline)
                        return -ETIMEDOUT;
                sleep_ms(10);
        }
}

static int daemon_start(struct stress_host *h) {
        const char *bin = getenv("VHOSTMIGD");
        if (!bin) {
                fprintf(stderr, "VHOSTMIGD is not set (run the program with meson test)\n");
                return -EINVAL;
        }
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0)
                private_bus_exec_daemon(bin, h->bus.address, h->config, h->log, h->dir);
        h->daemon = pid;
        uint64_t deadline = now_ms() + DAEMON_START_MS;
        for (;;) {
                bool owned;
                if (private_bus_name_has_owner(h->c, "org.vhostmig1", &owned) == 0 && owned)
                        return 0;
                int status = wait_exit(pid, 0);
                if (status != -ETIMEDOUT || now_ms() >= deadline) {
                        if (status != -ETIMEDOUT)
                                h->daemon = -1;
                        fprintf(stderr, "vhostmigd (%s) did not start\n", h->name);
                        return -EIO;
                }
                sleep_ms(20);
        }
}

static int write_config(const struct stress_host *h, const char *json) {
        FILE *f = fopen(h->config, "we");
        if (!f)
                return -errno;
        fputs(json, f);
        return fclose(f) == 0 ? 0 : -EIO;
}

int stress_host_start(struct stress_host *h, const char *name, const char *config_json, uint64_t call_timeout_usec) {
        memset(h, 0, sizeof(*h));
        h->daemon = -1;
        snprintf(h->name, sizeof(h->name), "%s", name);
        snprintf(h->dir, sizeof(h->dir), "/tmp/vhostmig-stress-%s-XXXXXX", name);
        if (!mkdtemp(h->dir)) {
                h->dir[0] = '\0';
                return -errno;
        }
        snprintf(h->config, sizeof(h->config), "%s/vhostmigd.json", h->dir);
        snprintf(h->log, sizeof(h->log), "%s/vhostmigd.log", h->dir);
        int r = write_config(h, config_json);
        if (r < 0)
                return r;
        if ((r = private_bus_start(&h->bus, false)) < 0 ||
            (r = private_bus_connect(h->bus.address, call_timeout_usec, &h->c)) < 0)
                return r;
        return daemon_start(h);
}

static void remove_dir(const char *dir) {
        DIR *d = opendir(dir);
        if (!d)
                return;
        struct dirent *de;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        (void) unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
        rmdir(dir);
}

static void copy_log(const struct stress_host *h) {
        FILE *f = fopen(h->log, "re");
        char line[1024];
        if (!f)
                return;
        fprintf(stderr, "---- vhostmigd %s ----\n", h->name);
        while (fgets(line, sizeof(line), f))
                fputs(line, stderr);
        fprintf(stderr, "---- end ----\n");
        fclose(f);
}

int stress_host_stop(struct stress_host *h, int dump_log) {
        int status = 0;
        if (h->daemon > 0) {
                kill(h->daemon, SIGTERM);
                status = wait_exit(h->daemon, DAEMON_STOP_MS);
                if (status == -ETIMEDOUT) {
                        kill(h->daemon, SIGKILL);
                        waitpid(h->daemon, NULL, 0);
                }
                h->daemon = -1;
        }
        if (status != 0)
                fprintf(stderr, "vhostmigd %s ended with wait status 0x%x\n", h->name, (unsigned) status);
        if (h->dir[0] && (dump_log || status != 0))
                copy_log(h);
        h->c = sd_bus_flush_close_unref(h->c);
        if (h->bus.pid > 0)
                (void) private_bus_stop(&h->bus);
        h->bus.pid = 0;
        if (h->dir[0])
                remove_dir(h->dir);
        h->dir[0] = '\0';
        return status == 0 ? 0 : -1;
}

long stress_rss_kib(pid_t pid) {
        char path[64], line[256];
        long kib = -ENOENT;
        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
                        break;
        fclose(f);
        return kib;
}

void stress_cpu_model(char *buf, size_t len) {
        char line[512];
        FILE *f = fopen("/proc/cpuinfo", "re");
        snprintf(buf, len, "unknown");
        if (!f)
                return;
        while (fgets(line, sizeof(line), f)) {
                char *colon = strchr(line, ':');
                if (strncmp(line, "model name", 10) == 0 && colon) {
                        snprintf(buf, len, "%s", colon + 2);
                        buf[strcspn(buf, "\n")] = '\0';
                        break;
                }
        }
        fclose(f);
}
