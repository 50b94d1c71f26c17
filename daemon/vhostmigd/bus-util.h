/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What every D-Bus method of vhostmigd uses: one way to fail, one way to read a{sv} options. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

/* Sets `error` (name, formatted message) and returns the negative errno sd-bus maps the name to. */
int bus_fail(sd_bus_error *error, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * One key an a{sv} argument may carry.  `type` is its D-Bus type (b, q, u, t
 * or s) and `offset` where its value goes in the caller's struct: bool,
 * uint16_t, uint32_t, uint64_t, or const char * (valid while the message is).
 */
struct bus_option {
        const char *key;
        char type;
        size_t offset;
};

/*
 * Reads an a{sv} into `out`.  An unknown key, a key given twice or a value of
 * another type is refused with InvalidArgs naming the key.  `given` gets a
 * bit per table row present (so 32 keys at most); it may be NULL.
 */
int bus_read_options(sd_bus_message *m, const struct bus_option *table, unsigned n, void *out, uint32_t *given,
                     sd_bus_error *error);
