/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Properties as vhostmigctl reads and prints them.  They are read
 * generically from a{sv} and printed by their D-Bus type, so a property the
 * daemon adds shows up without a change here; the name alone gives a label
 * ("MemorySize" is "Memory size:" in text and "memory_size" in JSON) and,
 * for a few, a friendlier form (sizes, feature masks, timestamps).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>

#include "migrate/probe.h"

/* One property value; the D-Bus type says which member holds it. */
struct value {
        char type[8];
        uint64_t num;   /* b y q u t */
        char *str;      /* s o g */
        char **strv;    /* as ao */
        uint32_t *nums; /* au */
        size_t n_nums;
};

struct prop {
        char *name;
        struct value v;
};

struct props {
        struct prop *v;
        size_t n;
};

/* One of our interfaces on one object, with its properties. */
struct object {
        char *path;
        char *iface;
        struct props props;
};

struct objects {
        struct object *v;
        size_t n;
};

void props_free(struct props *p);
/* Moves every property of `from` into `into`, replacing those of the same name; `from` ends empty.  0 or -ENOMEM. */
int props_merge(struct props *into, struct props *from);
void objects_free(struct objects *o);
void strv_free(char **l);
static inline void strv_freep(char ***l) {
        strv_free(*l);
}
size_t strv_length(char **l);
static inline void json_object_putp(json_object **o) {
        json_object_put(*o);
}

uint64_t prop_num(const struct props *p, const char *name);
const char *prop_str(const struct props *p, const char *name);
char **prop_strv(const struct props *p, const char *name);
const struct object *objects_find(const struct objects *o, const char *path, const char *iface);

/* a{sv}; a{sa{sv}} of `path` (interfaces not ours skipped); a{oa{sa{sv}}}.  0 or a negative errno. */
int read_props(sd_bus_message *m, struct props *out);
int read_interfaces(sd_bus_message *m, const char *path, struct objects *out);
int read_managed_objects(sd_bus_message *m, struct objects *out);

/* "vm0", "vm0/dev/1", "manager", or the path itself; NULL when out of memory. */
char *short_object(const char *path);

/*
 * A value on one line.  `quoted` (for watch): strings quoted, arrays
 * bracketed, feature masks followed by their names.  Otherwise (for show):
 * strings as they are, "(none)" for empty ones.
 */
void fput_value(FILE *f, const char *name, const struct value *v, bool quoted);

json_object *hex_json(uint64_t v);
json_object *feature_names_json(uint64_t bits, bool protocol);
json_object *value_json(const char *name, const struct value *v);
/* The names of a feature mask's bits, for the property `name`, or NULL when it is no mask. */
json_object *value_names_json(const char *name, const struct value *v);
/* Adds every property but `skip` as "snake_case": value; a feature mask also as "..._feature_names". */
int props_to_json(const struct props *p, json_object *o, const char *skip);
void print_json(json_object *o);

/* "memory_size" for "MemorySize", as --json names it; malloc'd, NULL when out of memory. */
char *prop_json_key(const char *name);
/* "Memory size:" for "MemorySize"; malloc'd, NULL when out of memory. */
char *prop_label(const char *name);
/* Every property but `skip`, one "  Label: value" each, feature names wrapped at the terminal's width. */
void print_props_text(const struct props *p, const char *skip);

/* A bytes count as "1G", "1.5M", "512B". */
void format_bytes(char *buf, size_t len, uint64_t bytes);

/* What `probe` prints, from the front-end itself or from Manager.Probe. */
void print_probe(bool json, const char *socket, const struct vhm_probe_result *r);
