/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "daemon/vhostmigd/bus-util.h"
#include "daemon/vhostmigd/quote.h"

int bus_fail(sd_bus_error *error, const char *name, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int r = sd_bus_error_setfv(error, name, fmt, ap);
        va_end(ap);
        return r;
}

static const struct bus_option *option_find(const struct bus_option *table, unsigned n, const char *key) {
        for (unsigned i = 0; i < n; i++)
                if (strcmp(table[i].key, key) == 0)
                        return &table[i];
        return NULL;
}

static int read_value(sd_bus_message *m, const struct bus_option *o, void *out) {
        void *p = (char *) out + o->offset;
        switch (o->type) {
        case 'b': {
                int v;
                int r = sd_bus_message_read_basic(m, 'b', &v);
                *(bool *) p = v;
                return r;
        }
        case 'q':
        case 'u':
        case 't':
        case 's':
                return sd_bus_message_read_basic(m, o->type, p);
        default:
                return -EINVAL;
        }
}

/* One {sv}: the key, then its variant, checked against the table. */
static int read_entry(sd_bus_message *m, const struct bus_option *table, unsigned n, void *out, uint32_t *given,
                      sd_bus_error *error) {
        const char *key, *contents;
        int r = sd_bus_message_read_basic(m, 's', &key);
        if (r < 0)
                return r;
        const struct bus_option *o = option_find(table, n, key);
        char q[QUOTED_MAX];
        if (!o) /* the caller's own string: quoted, so that it cannot add lines to the log */
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "options: unknown key %s", quoted(key, q));
        uint32_t bit = UINT32_C(1) << (o - table);
        if (*given & bit)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "options: \"%s\" given twice", key);
        r = sd_bus_message_peek_type(m, NULL, &contents);
        if (r < 0)
                return r;
        if (strlen(contents) != 1 || contents[0] != o->type)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "options: \"%s\" must be of type %c, got %s", key,
                                o->type, contents);
        r = sd_bus_message_enter_container(m, 'v', contents);
        if (r >= 0)
                r = read_value(m, o, out);
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r >= 0)
                *given |= bit;
        return r;
}

int bus_read_options(sd_bus_message *m, const struct bus_option *table, unsigned n, void *out, uint32_t *given,
                     sd_bus_error *error) {
        uint32_t seen = 0;
        int r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                r = read_entry(m, table, n, out, &seen, error);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        if (given)
                *given = seen;
        return 0;
}
