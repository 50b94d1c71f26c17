/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "tests/libvirt-watch/libvirtd-fixture.h"

static const char *binary(const char *env, const char *path) {
        const char *b = getenv(env);
        if (!b)
                b = path;
        return access(b, X_OK) == 0 ? b : NULL;
}

const char *libvirtd_fixture_binary(void) {
        return binary("LIBVIRTD", "/usr/sbin/libvirtd");
}

const char *libvirtd_fixture_virsh(void) {
        return binary("VIRSH", "/usr/bin/virsh");
}

static void sleep_ms(unsigned ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

static void quiet(void *userdata, virErrorPtr e) {
        (void) userdata;
        (void) e;
}

/* Ready when a client gets through: the socket file alone appears before libvirtd serves it. */
static int wait_ready(struct libvirtd_fixture *f, unsigned timeout_ms) {
        virSetErrorFunc(NULL, quiet);
        for (unsigned waited = 0; waited < timeout_ms; waited += 50) {
                int status;
                if (waitpid(f->pid, &status, WNOHANG) == f->pid) {
                        fprintf(stderr, "libvirtd exited during start-up (see %s/libvirtd.log)\n", f->dir);
                        f->pid = 0;
                        return -ECHILD;
                }
                virConnectPtr c = virConnectOpen(f->uri);
                if (c) {
                        virConnectClose(c);
                        return 0;
                }
                sleep_ms(50);
        }
        fprintf(stderr, "libvirtd did not accept connections within %u ms\n", timeout_ms);
        return -ETIMEDOUT;
}

static int spawn(struct libvirtd_fixture *f) {
        const char *bin = libvirtd_fixture_binary();
        if (!bin)
                return -ENOENT;
        char config[300], pidfile[300], drivers[300], log[300];
        snprintf(config, sizeof(config), "%s/libvirtd.conf", f->dir);
        snprintf(pidfile, sizeof(pidfile), "%s/libvirtd.pid", f->dir);
        snprintf(drivers, sizeof(drivers), "%s/drivers", f->dir);
        snprintf(log, sizeof(log), "%s/libvirtd.log", f->dir);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                /* An empty driver directory: without it the QEMU driver loads and wants its user. */
                setenv("LIBVIRT_DRIVER_DIR", drivers, 1);
                execl(bin, "libvirtd", "-f", config, "-p", pidfile, (char *) NULL);
                _exit(127);
        }
        f->pid = pid;
        int r = wait_ready(f, 10000);
        if (r < 0 && f->pid)
                libvirtd_fixture_kill(f, SIGKILL);
        return r;
}

static int write_config(const struct libvirtd_fixture *f) {
        char path[300];
        snprintf(path, sizeof(path), "%s/libvirtd.conf", f->dir);
        FILE *c = fopen(path, "we");
        if (!c)
                return -errno;
        fprintf(c, "unix_sock_dir = \"%s/sock\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n", f->dir);
        return fclose(c) == 0 ? 0 : -errno;
}

int libvirtd_fixture_start(struct libvirtd_fixture *f) {
        memset(f, 0, sizeof(*f));
        snprintf(f->dir, sizeof(f->dir), "/tmp/vhm-libvirtd-XXXXXX");
        if (!mkdtemp(f->dir)) {
                f->dir[0] = '\0';
                return -errno;
        }
        char sub[300];
        snprintf(sub, sizeof(sub), "%s/sock", f->dir);
        int r = mkdir(sub, 0700) < 0 ? -errno : 0;
        snprintf(sub, sizeof(sub), "%s/drivers", f->dir);
        if (r == 0 && mkdir(sub, 0700) < 0)
                r = -errno;
        if (r == 0)
                r = write_config(f);
        snprintf(f->uri, sizeof(f->uri), "test+unix:///default?socket=%s/sock/libvirt-sock", f->dir);
        if (r == 0)
                r = spawn(f);
        if (r < 0)
                fprintf(stderr, "libvirtd fixture: %s\n", strerror(-r));
        return r;
}

int libvirtd_fixture_restart(struct libvirtd_fixture *f) {
        return f->pid ? -EBUSY : spawn(f);
}

int libvirtd_fixture_kill(struct libvirtd_fixture *f, int sig) {
        if (!f->pid)
                return 0;
        kill(f->pid, sig);
        for (unsigned waited = 0; waited < 5000; waited += 10) {
                if (waitpid(f->pid, NULL, WNOHANG) == f->pid) {
                        f->pid = 0;
                        return 0;
                }
                sleep_ms(10);
        }
        kill(f->pid, SIGKILL);
        waitpid(f->pid, NULL, 0);
        f->pid = 0;
        return -ETIMEDOUT;
}

static void remove_tree(const char *dir) {
        pid_t pid = fork();
        if (pid == 0) {
                execl("/bin/rm", "rm", "-rf", "--", dir, (char *) NULL);
                _exit(127);
        }
        if (pid > 0)
                waitpid(pid, NULL, 0);
}

void libvirtd_fixture_cleanup(struct libvirtd_fixture *f) {
        libvirtd_fixture_kill(f, SIGTERM);
        if (f->dir[0])
                remove_tree(f->dir);
        f->dir[0] = '\0';
}

int libvirtd_fixture_virsh_run(const struct libvirtd_fixture *f, ...) {
        const char *virsh = libvirtd_fixture_virsh();
        if (!virsh)
                return -ENOENT;
        const char *argv[16] = { "virsh", "-q", "-c", f->uri };
        unsigned n = 4;
        va_list ap;
        va_start(ap, f);
        for (const char *a; n < 15 && (a = va_arg(ap, const char *));)
                argv[n++] = a;
        va_end(ap);
        argv[n] = NULL;
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
                if (null >= 0)
                        dup2(null, 1);
                execv(virsh, (char *const *) argv);
                _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0)
                return -errno;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* What libvirt-notes.md says vhost-user needs: shared memory and a vhostuser interface. */
static const char domain_xml[] = "<domain type='test'>\n"
                                 "  <name>%s</name>\n"
                                 "  <memory unit='MiB'>64</memory>\n"
                                 "  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>\n"
                                 "  <os><type>hvm</type></os>\n"
                                 "  <devices>\n"
                                 "    <interface type='vhostuser'>\n"
                                 "      <mac address='52:54:00:3b:83:1b'/>\n"
                                 "      <source type='unix' path='%s/vhu0.sock' mode='client'/>\n"
                                 "      <model type='virtio'/>\n"
                                 "    </interface>\n"
                                 "  </devices>\n"
                                 "</domain>\n";

int libvirtd_fixture_define_vhostuser_domain(const struct libvirtd_fixture *f, const char *name, char *uuid) {
        char xml[2048];
        snprintf(xml, sizeof(xml), domain_xml, name, f->dir);
        virConnectPtr c = virConnectOpen(f->uri);
        if (!c)
                return -ECONNREFUSED;
        int r = -EINVAL;
        virDomainPtr dom = virDomainDefineXML(c, xml);
        if (dom && virDomainCreate(dom) == 0 && virDomainGetUUIDString(dom, uuid) == 0)
                r = 0;
        if (r < 0)
                fprintf(stderr, "libvirtd fixture: domain %s: %s\n", name, virGetLastErrorMessage());
        if (dom)
                virDomainFree(dom);
        virConnectClose(c);
        return r;
}
