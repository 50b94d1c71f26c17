/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/common/private-bus.h"

int run_wait(char *const argv[]) {
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                execv(argv[0], argv);
                _exit(127);
        }
        int status;
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return status;
}

void describe_status(int status, char *buf, size_t len) {
        if (status < 0)
                snprintf(buf, len, "%s", strerror(-status));
        else if (WIFEXITED(status))
                snprintf(buf, len, "exit status %d", WEXITSTATUS(status));
        else if (WIFSIGNALED(status))
                snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
        else
                snprintf(buf, len, "wait status 0x%x", (unsigned) status);
}

int shell_unquote(const char *in, char *out, size_t len) {
        size_t n = 0;
        for (const char *p = in; *p; p++) {
                char c = *p;
                if (c == '$' && p[1] == '\'')
                        return -EINVAL;
                if (c == '\'') {
                        for (p++; *p && *p != '\''; p++) {
                                if (n + 1 >= len)
                                        return -ENOSPC;
                                out[n++] = *p;
                        }
                        if (!*p)
                                return -EINVAL;
                        continue;
                }
                if (c == '\\') {
                        if (!*++p)
                                return -EINVAL;
                        c = *p;
                }
                if (n + 1 >= len)
                        return -ENOSPC;
                out[n++] = c;
        }
        out[n] = '\0';
        return 0;
}

/* start-bus.sh --stop PID DIR: its wait status, or a negative errno. */
static int run_stop(const char *script, const struct private_bus *b) {
        char pid[16];
        snprintf(pid, sizeof(pid), "%d", (int) b->pid);
        char *argv[] = { (char *) script, (char *) "--stop", pid, (char *) b->dir, NULL };
        return run_wait(argv);
}

int private_bus_start(struct private_bus *b, bool permissive) {
        const char *script = getenv("START_BUS");
        if (!script) {
                fprintf(stderr, "START_BUS is not set (run the test with meson test)\n");
                return -EINVAL;
        }
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "'%s'%s", script, permissive ? " --permissive" : "");
        FILE *p = popen(cmd, "re");
        if (!p) {
                int r = -errno;
                fprintf(stderr, "popen %s: %s\n", cmd, strerror(-r));
                return r;
        }
        memset(b, 0, sizeof(*b));
        char line[1024], value[512];
        bool bad = false;
        while (fgets(line, sizeof(line), p)) {
                line[strcspn(line, "\n")] = '\0';
                char *eq = strchr(line, '=');
                if (!eq || shell_unquote(eq + 1, value, sizeof(value)) < 0) {
                        fprintf(stderr, "start-bus.sh: cannot parse \"%s\"\n", line);
                        bad = true;
                        continue;
                }
                *eq = '\0';
                if (strcmp(line, "BUS_ADDRESS") == 0)
                        snprintf(b->address, sizeof(b->address), "%s", value);
                else if (strcmp(line, "BUS_PID") == 0)
                        b->pid = (pid_t) atoi(value);
                else if (strcmp(line, "BUS_DIR") == 0)
                        snprintf(b->dir, sizeof(b->dir), "%s", value);
        }
        int status = pclose(p);
        if (status != 0 || bad || !b->address[0] || b->pid <= 0 || !b->dir[0]) {
                char why[64];
                describe_status(status, why, sizeof(why));
                fprintf(stderr, "start-bus.sh%s failed (%s)\n", permissive ? " --permissive" : "", why);
                if (b->pid > 0 && b->dir[0])
                        (void) run_stop(script, b);
                memset(b, 0, sizeof(*b));
                return -EIO;
        }
        return 0;
}

int private_bus_stop(const struct private_bus *b) {
        int status = run_stop(getenv("START_BUS"), b);
        if (status != 0)
                fprintf(stderr, "start-bus.sh --stop %d %s failed\n", (int) b->pid, b->dir);
        return status;
}

int private_bus_connect(const char *address, uint64_t call_timeout_usec, sd_bus **out) {
        sd_bus *b = NULL;
        int r = sd_bus_new(&b);
        if (r >= 0)
                r = sd_bus_set_address(b, address);
        if (r >= 0)
                r = sd_bus_set_bus_client(b, 1);
        if (r >= 0)
                r = sd_bus_negotiate_fds(b, 1);
        if (r >= 0)
                r = sd_bus_start(b);
        if (r >= 0 && call_timeout_usec)
                r = sd_bus_set_method_call_timeout(b, call_timeout_usec);
        if (r < 0) {
                sd_bus_flush_close_unref(b);
                return r;
        }
        *out = b;
        return 0;
}

int private_bus_name_has_owner(sd_bus *b, const char *name, bool *has) {
        sd_bus_message *reply = NULL;
        int v = 0;
        int r = sd_bus_call_method(b, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                   "NameHasOwner", NULL, &reply, "s", name);
        if (r >= 0)
                r = sd_bus_message_read(reply, "b", &v);
        sd_bus_message_unref(reply);
        *has = v;
        return r < 0 ? r : 0;
}

_Noreturn void private_bus_exec_daemon(const char *bin, const char *address, const char *config, const char *log,
                                       const char *runtime_dir) {
        int log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (log_fd < 0 || null < 0)
                _exit(126);
        dup2(null, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        close_range(3, ~0u, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setenv("DBUS_SYSTEM_BUS_ADDRESS", address, 1);
        setenv("RUNTIME_DIRECTORY", runtime_dir, 1);
        unsetenv("NOTIFY_SOCKET");
        unsetenv("JOURNAL_STREAM");
        execl(bin, "vhostmigd", "--config", config, (char *) NULL);
        _exit(127);
}
