/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include <json-c/json.h>

#include "daemon/config.h"

#define MAX_CONFIG_BYTES (1u << 20)

static const char *const level_names[] = {
        [LOG_ERR] = "err", [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

void config_defaults(struct vhostmigd_config *cfg) {
        *cfg = (struct vhostmigd_config) {
                .request_timeout_ms = 5000,
                .monitor_interval_ms = 500,
                .max_vms = 64,
                .log_level = LOG_INFO,
        };
}

/* One table entry per key: its name, how to read it, its bounds. */
enum key_kind { KEY_UINT, KEY_LEVEL };

struct key {
        const char *name;
        enum key_kind kind;
        size_t offset;
        unsigned min, max;
};

#define UINT_KEY(n, field, lo, hi) { n, KEY_UINT, offsetof(struct vhostmigd_config, field), lo, hi }

static const struct key keys[] = {
        UINT_KEY("request_timeout_ms", request_timeout_ms, 10, 600000),
        UINT_KEY("monitor_interval_ms", monitor_interval_ms, 10, 60000),
        UINT_KEY("max_vms", max_vms, 1, 4096),
        { "log_level", KEY_LEVEL, offsetof(struct vhostmigd_config, log_level), 0, 0 },
};

static int set_uint(const struct key *k, json_object *v, void *field, char *error, size_t len) {
        if (!json_object_is_type(v, json_type_int)) {
                snprintf(error, len, "\"%s\": expected an integer, got %s", k->name,
                         json_type_to_name(json_object_get_type(v)));
                return -EINVAL;
        }
        errno = 0;
        int64_t n = json_object_get_int64(v);
        if (errno || n < k->min || n > k->max) {
                snprintf(error, len, "\"%s\": %s is out of range %u..%u", k->name,
                         json_object_to_json_string(v), k->min, k->max);
                return -ERANGE;
        }
        *(unsigned *) field = (unsigned) n;
        return 0;
}

static int set_level(const struct key *k, json_object *v, void *field, char *error, size_t len) {
        const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
        for (size_t i = 0; s && i < sizeof(level_names) / sizeof(level_names[0]); i++)
                if (level_names[i] && strcmp(s, level_names[i]) == 0) {
                        *(int *) field = (int) i;
                        return 0;
                }
        snprintf(error, len, "\"%s\": expected one of \"err\", \"warning\", \"notice\", \"info\", \"debug\"", k->name);
        return -EINVAL;
}

static int apply_key(struct vhostmigd_config *cfg, const char *name, json_object *v, char *error, size_t len) {
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                const struct key *k = &keys[i];
                if (strcmp(k->name, name) != 0)
                        continue;
                void *field = (char *) cfg + k->offset;
                switch (k->kind) {
                case KEY_UINT: return set_uint(k, v, field, error, len);
                case KEY_LEVEL: return set_level(k, v, field, error, len);
                }
        }
        snprintf(error, len, "\"%s\": unknown key", name);
        return -EINVAL;
}

/* One JSON document in json-c's strict mode (no comments, no trailing commas, nothing after it). */
static int parse_document(const char *text, json_object **out, char *error, size_t len) {
        json_tokener *tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        size_t n = strlen(text);
        json_object *obj = json_tokener_parse_ex(tok, text, (int) n);
        enum json_tokener_error jerr = json_tokener_get_error(tok);
        size_t consumed = json_tokener_get_parse_end(tok);
        json_tokener_free(tok);
        if (!obj || jerr != json_tokener_success) {
                json_object_put(obj);
                snprintf(error, len, "invalid JSON at byte %zu: %s", consumed,
                         jerr == json_tokener_continue ? "unexpected end of input" : json_tokener_error_desc(jerr));
                return -EINVAL;
        }
        /* Strict mode also refuses anything but white space after the document. */
        *out = obj;
        return 0;
}

int config_parse(struct vhostmigd_config *cfg, const char *text, char *error, size_t len) {
        json_object *root;
        int r = parse_document(text, &root, error, len);
        if (r < 0)
                return r;
        if (!json_object_is_type(root, json_type_object)) {
                json_object_put(root);
                snprintf(error, len, "the top level must be an object");
                return -EINVAL;
        }
        struct vhostmigd_config parsed = *cfg;
        json_object_object_foreach(root, key, value) {
                r = apply_key(&parsed, key, value, error, len);
                if (r < 0)
                        break;
        }
        json_object_put(root);
        if (r == 0)
                *cfg = parsed;
        return r;
}

int config_load(struct vhostmigd_config *cfg, const char *path, bool optional, char *error, size_t len) {
        config_defaults(cfg);
        FILE *f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT && optional)
                        return 0;
                int r = -errno;
                snprintf(error, len, "%s: %s", path, strerror(-r));
                return r;
        }
        char *text = calloc(1, MAX_CONFIG_BYTES + 1);
        size_t n = text ? fread(text, 1, MAX_CONFIG_BYTES + 1, f) : 0;
        bool read_error = ferror(f);
        fclose(f);
        if (!text)
                return -ENOMEM;
        char detail[256];
        int r = -EINVAL;
        if (read_error)
                snprintf(detail, sizeof(detail), "read error");
        else if (n > MAX_CONFIG_BYTES)
                snprintf(detail, sizeof(detail), "larger than %u bytes", MAX_CONFIG_BYTES);
        else if (memchr(text, '\0', n))
                snprintf(detail, sizeof(detail), "contains a NUL byte");
        else
                r = config_parse(cfg, text, detail, sizeof(detail));
        if (r < 0)
                snprintf(error, len, "%s: %s", path, detail);
        free(text);
        if (r < 0)
                config_defaults(cfg);
        return r;
}

char *config_to_json(const struct vhostmigd_config *cfg) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "request_timeout_ms", json_object_new_int64(cfg->request_timeout_ms));
        json_object_object_add(o, "monitor_interval_ms", json_object_new_int64(cfg->monitor_interval_ms));
        json_object_object_add(o, "max_vms", json_object_new_int64(cfg->max_vms));
        json_object_object_add(o, "log_level", json_object_new_string(level_names[cfg->log_level]));
        char *s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
        return s;
}
