/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon/common/validate.h"

__attribute__((format(printf, 4, 5))) static int invalid(int err, char *why, size_t len, const char *fmt, ...) {
        if (why && len) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(why, len, fmt, ap);
                va_end(ap);
        }
        return err;
}

static bool name_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
               c == '-';
}

int validate_vm_name(const char *name, char *why, size_t len) {
        size_t n = strlen(name);
        if (n == 0 || n > VALIDATE_VM_NAME_MAX)
                return invalid(-EINVAL, why, len, "\"%s\" is not 1..%u characters long", name, VALIDATE_VM_NAME_MAX);
        for (size_t i = 0; i < n; i++)
                if (!name_char(name[i]))
                        return invalid(-EINVAL, why, len, "\"%s\" has characters outside [A-Za-z0-9_.-]", name);
        return 0;
}

static int hex_digit(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

int validate_mac(const char *s, uint8_t mac[6], char *why, size_t len) {
        /* Byte by byte: sscanf("%2x") would take "-1" or " f" as a group. */
        if (strlen(s) != VALIDATE_MAC_LEN)
                return invalid(-EINVAL, why, len, "\"%s\" is not xx:xx:xx:xx:xx:xx", s);
        for (unsigned i = 0; i < 6; i++) {
                const char *g = s + 3 * i;
                int hi = hex_digit(g[0]), lo = hex_digit(g[1]);
                if (hi < 0 || lo < 0 || (i < 5 && g[2] != ':'))
                        return invalid(-EINVAL, why, len, "\"%s\" is not xx:xx:xx:xx:xx:xx", s);
                if (mac)
                        mac[i] = (uint8_t) (hi << 4 | lo);
        }
        return 0;
}

int validate_mtu(unsigned mtu, char *why, size_t len) {
        if (mtu < VALIDATE_MTU_MIN || mtu > 65535)
                return invalid(-ERANGE, why, len, "%u is not in %u..65535", mtu, VALIDATE_MTU_MIN);
        return 0;
}

int validate_eventfd(int fd, char *why, size_t len) {
        char link[64], target[64];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                return invalid(-EBADF, why, len, "fd %d is not open", fd);
        target[n] = '\0';
        if (strcmp(target, "anon_inode:[eventfd]") != 0)
                return invalid(-EINVAL, why, len, "fd %d is %s, not an eventfd", fd, target);
        return 0;
}

int validate_socket_path(const char *path, char *why, size_t len) {
        if (path[0] != '/')
                return invalid(-EINVAL, why, len, "\"%s\" is not an absolute path", path);
        if (strlen(path) > VALIDATE_SOCKET_MAX)
                return invalid(-ENAMETOOLONG, why, len, "longer than %u bytes", VALIDATE_SOCKET_MAX);
        return 0;
}
