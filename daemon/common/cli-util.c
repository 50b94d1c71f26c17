/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "daemon/common/cli-util.h"

void cli_error(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "%s: ", program_invocation_short_name);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
}

int cli_usage_error(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "%s: ", program_invocation_short_name);
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\nTry '%s --help'.\n", program_invocation_short_name);
        va_end(ap);
        return CLI_EXIT_USAGE;
}

int cli_command_usage_error(const char *command, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "%s: %s: ", program_invocation_short_name, command);
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\nTry '%s %s --help'.\n", program_invocation_short_name, command);
        va_end(ap);
        return CLI_EXIT_USAGE;
}

unsigned cli_columns(void) {
        struct winsize ws;
        unsigned long n = 0;

        if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
                n = ws.ws_col;
        else {
                const char *env = getenv("COLUMNS");
                char *end;
                if (env && isdigit((unsigned char) *env)) {
                        errno = 0;
                        n = strtoul(env, &end, 10);
                        if (errno || *end)
                                n = 0;
                }
        }
        if (n == 0)
                n = 80;
        return n < 40 ? 40 : n > 1000 ? 1000 : (unsigned) n;
}

/* K, M, G, T (optionally followed by "i" and/or "B") to a shift; -1 if none fits. */
static int suffix_shift(const char **p) {
        static const char units[] = "KMGT";
        const char *u = **p ? strchr(units, toupper((unsigned char) **p)) : NULL;
        if (!u)
                return -1;
        (*p)++;
        if (**p == 'i')
                (*p)++;
        if (**p == 'B' || **p == 'b')
                (*p)++;
        return 10 * (int) (u - units + 1);
}

int cli_parse_u64(const char *s, bool suffix, uint64_t *ret) {
        const char *digits = s;
        int base = 10;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
                digits = s + 2;
                base = 16;
        }
        /* strtoull would take signs and white space: only digits may start. */
        if (base == 16 ? !isxdigit((unsigned char) *digits) : !isdigit((unsigned char) *digits))
                return -EINVAL;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(digits, &end, base);
        if (errno)
                return -errno;
        const char *rest = end;
        int shift = 0;
        if (suffix && *rest && (shift = suffix_shift(&rest)) < 0)
                return -EINVAL;
        if (*rest)
                return -EINVAL;
        if (shift && v > (UINT64_MAX >> shift))
                return -ERANGE;
        *ret = (uint64_t) v << shift;
        return 0;
}
