/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: vhostmigd's configuration file (daemon/vhostmigd/config.c),
 * which root writes but a package, a template or a typo may fill with
 * anything.  The input is parsed twice, as text (config_parse) and as the
 * file vhostmigd loads (config_load of a memfd through /proc/self/fd), and
 * the two must agree.  A refused file leaves the defaults and a reason; an accepted one prints (config_to_json) as a document that is
 * accepted again with no difference (config_diff) from the first.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "daemon/vhostmigd/config.h"
#include "tests/fuzz/fuzz.h"

/* Longer inputs are cut: well below the daemon's limit (1 MiB), so both ways read the whole input. */
#define MAX_INPUT (64 * 1024)

/* Whether a and b are the same configuration; aborts when config_diff cannot say. */
static bool same(const struct vhostmigd_config *a, const struct vhostmigd_config *b) {
        char *d = config_diff(a, b);
        if (!d)
                abort();
        bool equal = d[0] == '\0';
        free(d);
        return equal;
}

/* A reason is given.  It may hold a newline: a key is quoted as the file spells it. */
static bool has_reason(const char *why) {
        return why[0] != '\0';
}

/* config_load of the raw bytes, as the daemon reads its file. */
static int load_as_file(const uint8_t *data, size_t size, struct vhostmigd_config *cfg, char *why, size_t len) {
        int fd = memfd_create("fuzz-config", MFD_CLOEXEC);
        if (fd < 0 || write(fd, data, size) != (ssize_t) size)
                abort();
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        int r = config_load(cfg, path, false, why, len);
        close(fd);
        return r;
}

/* An accepted configuration prints as a document that gives it back. */
static void check_round_trip(const struct vhostmigd_config *cfg) {
        char *json = config_to_json(cfg);
        if (!json)
                abort();
        struct vhostmigd_config again;
        char why[512] = "";
        config_defaults(&again);
        if (config_parse(&again, json, why, sizeof(why)) < 0 || !same(cfg, &again)) {
                fprintf(stderr, "the effective configuration does not parse back (%s):\n%s\n", why, json);
                abort();
        }
        free(json);
}

int fuzz_config_one(const uint8_t *data, size_t size) {
        if (size > MAX_INPUT)
                size = MAX_INPUT;
        char *text = strndup((const char *) data, size);
        if (!text)
                abort();
        struct vhostmigd_config defaults, parsed, loaded;
        char why_parse[512] = "", why_load[512] = "";
        config_defaults(&defaults);
        config_defaults(&parsed);
        int rp = config_parse(&parsed, text, why_parse, sizeof(why_parse));
        int rl = load_as_file(data, size, &loaded, why_load, sizeof(why_load));
        bool has_nul = strlen(text) < size;
        free(text);

        if (rp < 0 && (!has_reason(why_parse) || !same(&parsed, &defaults)))
                abort();
        if (rl < 0 && (!has_reason(why_load) || !same(&loaded, &defaults)))
                abort();
        /* The file is the text unless it holds a NUL, which the loader refuses outright. */
        if (has_nul ? rl >= 0 : (rl < 0) != (rp < 0) || (rl >= 0 && !same(&parsed, &loaded)))
                abort();
        if (rp >= 0)
                check_round_trip(&parsed);
        return rp >= 0;
}
