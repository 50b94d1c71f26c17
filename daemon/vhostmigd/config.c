/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include <json-c/json.h>

#include "daemon/vhostmigd/config.h"
#include "daemon/vhostmigd/quote.h"

#define MAX_CONFIG_BYTES (1u << 20)

/* systemd's names of the syslog priorities, which `systemctl service-log-level` takes. */
static const char *const level_names[] = {
        [LOG_EMERG] = "emerg",     [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit", [LOG_ERR] = "err",
        [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

int config_log_level_from_name(const char *name) {
        for (size_t i = 0; name && i < sizeof(level_names) / sizeof(level_names[0]); i++)
                if (strcmp(name, level_names[i]) == 0)
                        return (int) i;
        return -EINVAL;
}

const char *config_log_level_name(int level) {
        if (level < 0 || (size_t) level >= sizeof(level_names) / sizeof(level_names[0]))
                return NULL;
        return level_names[level];
}

void config_defaults(struct vhostmigd_config *cfg) {
        *cfg = (struct vhostmigd_config){
                .request_timeout_ms = 5000,
                .monitor_interval_ms = 500,
                .max_vms = 64,
                .max_probes = 4,
                .log_level = LOG_INFO,
                /* 1 TiB: a 32 MiB dirty log and migration bitmap at most. */
                .max_guest_phys_addr = UINT64_C(1) << 40,
                /* Owner and group: a back-end of the socket's group may connect. */
                .server_socket_mode = 0660,
                .server_socket_group = (gid_t) -1,
                .libvirt = { .keepalive_interval_s = 5,
                             .keepalive_count = 5,
                             .reconnect_min_ms = 500,
                             .reconnect_max_ms = 30000 },
        };
}

/* One table entry per key: its name, how to read it, where it goes, its bounds. */
enum key_kind {
        KEY_UINT,
        KEY_GPA,
        KEY_LEVEL,
        KEY_MODE,
        KEY_GROUP,
        KEY_UIDS,
        KEY_VMS,
        KEY_LIBVIRT
};

struct key {
        const char *name;
        enum key_kind kind;
        size_t offset;
        uint64_t min, max;
};

#define KEY(n, kind, field, lo, hi) \
        { n, kind, offsetof(struct vhostmigd_config, field), lo, hi }

static const struct key keys[] = {
        KEY("request_timeout_ms", KEY_UINT, request_timeout_ms, 10, 600000),
        KEY("monitor_interval_ms", KEY_UINT, monitor_interval_ms, 10, 60000),
        KEY("max_vms", KEY_UINT, max_vms, 1, 4096),
        KEY("max_probes", KEY_UINT, max_probes, 1, CONFIG_MAX_PROBES),
        KEY("log_level", KEY_LEVEL, log_level, 0, 0),
        /* From 1 GiB to 2^52, the x86-64 and arm64 physical address limit. */
        KEY("max_guest_phys_addr", KEY_GPA, max_guest_phys_addr, UINT64_C(1) << 30, UINT64_C(1) << 52),
        KEY("server_socket_mode", KEY_MODE, server_socket_mode, 0, 0777),
        KEY("server_socket_group", KEY_GROUP, server_socket_group, 0, 0),
        KEY("backend_uids", KEY_UIDS, backend_uids, 0, UINT32_MAX - 1),
        KEY("vms", KEY_VMS, vm_policies, 0, 0),
        KEY("libvirt", KEY_LIBVIRT, libvirt, 0, 0),
};

/* Where a key's value goes in the configuration. */
static void *field_of(struct vhostmigd_config *cfg, const struct key *k) {
        return (char *) cfg + k->offset;
}

__attribute__((format(printf, 3, 4))) static int key_error(char *error, size_t len, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error, len, fmt, ap);
        va_end(ap);
        return -EINVAL;
}

static int read_integer(const char *name, json_object *v, uint64_t min, uint64_t max, uint64_t *out, char *error,
                        size_t len) {
        char q[QUOTED_MAX];
        if (!json_object_is_type(v, json_type_int))
                return key_error(error, len, "%s: expected an integer, got %s", quoted(name, q),
                                 json_type_to_name(json_object_get_type(v)));
        /* json-c keeps integers as int64 or uint64; a negative one is below every minimum here. */
        errno = 0;
        int64_t s = json_object_get_int64(v);
        uint64_t u = s < 0 ? 0 : json_object_get_uint64(v);
        if (s < 0 || errno || u < min || u > max) {
                snprintf(error, len, "%s: %s is out of range %" PRIu64 "..%" PRIu64, quoted(name, q),
                         json_object_to_json_string(v), min, max);
                return -ERANGE;
        }
        *out = u;
        return 0;
}

static int set_uint(const struct key *k, json_object *v, struct vhostmigd_config *cfg, char *error, size_t len) {
        uint64_t n;
        int r = read_integer(k->name, v, k->min, k->max, &n, error, len);
        if (r == 0)
                *(unsigned *) field_of(cfg, k) = (unsigned) n;
        return r;
}

/* A guest-physical address: whole 4 KiB pages. */
static int set_gpa(const struct key *k, json_object *v, struct vhostmigd_config *cfg, char *error, size_t len) {
        uint64_t gpa;
        int r = read_integer(k->name, v, k->min, k->max, &gpa, error, len);
        if (r < 0)
                return r;
        if (gpa % 4096)
                return key_error(error, len, "\"%s\": %" PRIu64 " is not a multiple of 4096", k->name, gpa);
        *(uint64_t *) field_of(cfg, k) = gpa;
        return 0;
}

static int set_level(const struct key *k, json_object *v, struct vhostmigd_config *cfg, char *error, size_t len) {
        int level = config_log_level_from_name(json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                                                        : NULL);
        if (level < 0)
                return key_error(error, len,
                                 "\"%s\": expected one of \"emerg\", \"alert\", \"crit\", \"err\", "
                                 "\"warning\", \"notice\", \"info\", \"debug\"",
                                 k->name);
        *(int *) field_of(cfg, k) = level;
        return 0;
}

/* A mode is written as systemd writes them: an octal string such as "0660". */
static int set_mode(const struct key *k, json_object *v, struct vhostmigd_config *cfg, char *error, size_t len) {
        const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
        size_t n = s ? strlen(s) : 0;
        if (n < 3 || n > 4 || strspn(s, "01234567") != n)
                return key_error(error, len, "\"%s\": expected an octal mode such as \"0660\"", k->name);
        unsigned long mode = strtoul(s, NULL, 8);
        if (mode > k->max)
                return key_error(error, len, "\"%s\": %s has bits beyond 0777", k->name, s);
        /* Without the owner's write bit nobody could connect, the daemon's own probes neither. */
        if (!(mode & 0200))
                return key_error(error, len, "\"%s\": %s lacks the owner's write permission (0200)", k->name, s);
        *(unsigned *) field_of(cfg, k) = (unsigned) mode;
        return 0;
}

/* A group by name (resolved now, so a typo is caught at start) or by number. */
static int set_group(const struct key *k, json_object *v, struct vhostmigd_config *cfg, char *error, size_t len) {
        if (json_object_is_type(v, json_type_int)) {
                uint64_t gid;
                int r = read_integer(k->name, v, 0, UINT32_MAX - 1, &gid, error, len);
                if (r < 0)
                        return r;
                *(gid_t *) field_of(cfg, k) = (gid_t) gid;
                cfg->server_socket_group_name[0] = '\0';
                return 0;
        }
        const char *name = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
        if (!name || !*name || strlen(name) >= sizeof(cfg->server_socket_group_name))
                return key_error(error, len, "\"%s\": expected a group name or a gid", k->name);
        struct group grp, *found = NULL;
        char q[QUOTED_MAX];
        char buf[4096];
        int r = getgrnam_r(name, &grp, buf, sizeof(buf), &found);
        if (r != 0 || !found)
                return key_error(error, len, "\"%s\": no group named %s%s%s", k->name, quoted(name, q), r ? ": " : "",
                                 r ? strerror(r) : "");
        *(gid_t *) field_of(cfg, k) = found->gr_gid;
        snprintf(cfg->server_socket_group_name, sizeof(cfg->server_socket_group_name), "%s", name);
        return 0;
}

static int read_uid_list(const char *name, json_object *v, struct config_uid_list *out, char *error, size_t len) {
        if (!json_object_is_type(v, json_type_array))
                return key_error(error, len, "\"%s\": expected an array of uids", name);
        size_t n = json_object_array_length(v);
        if (n > CONFIG_MAX_UIDS)
                return key_error(error, len, "\"%s\": at most %u uids", name, CONFIG_MAX_UIDS);
        struct config_uid_list list = { .n = (unsigned) n };
        for (size_t i = 0; i < n; i++) {
                uint64_t uid;
                char item[96];
                snprintf(item, sizeof(item), "%s[%zu]", name, i);
                int r = read_integer(item, json_object_array_get_idx(v, i), 0, UINT32_MAX - 1, &uid, error, len);
                if (r < 0)
                        return r;
                list.uid[i] = (uid_t) uid;
        }
        *out = list;
        return 0;
}

static int set_uids(const struct key *k, json_object *v, struct vhostmigd_config *cfg, char *error, size_t len) {
        return read_uid_list(k->name, v, field_of(cfg, k), error, len);
}

/* A VM name as vhostmigd accepts it (migrate/vm.h): 1..63 of [A-Za-z0-9_.-]. */
static bool valid_vm_name(const char *s) {
        size_t n = strlen(s);
        return n > 0 && n < CONFIG_VM_NAME_MAX &&
               strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

static int read_vm_policy(const char *vm, json_object *v, struct config_vm_policy *out, char *error, size_t len) {
        char where[128], q[QUOTED_MAX];
        if (!valid_vm_name(vm))
                return key_error(error, len, "\"vms\": %s is not a VM name (1..63 of A-Z a-z 0-9 _ . -)",
                                 quoted(vm, q));
        if (!json_object_is_type(v, json_type_object))
                return key_error(error, len, "\"vms.%s\": expected an object", vm);
        snprintf(out->name, sizeof(out->name), "%s", vm);
        json_object_object_foreach(v, key, value) {
                if (strcmp(key, "backend_uids") != 0) {
                        snprintf(where, sizeof(where), "vms.%s.%s", vm, key);
                        return key_error(error, len, "%s: unknown key", quoted(where, q));
                }
                snprintf(where, sizeof(where), "vms.%s.backend_uids", vm);
                int r = read_uid_list(where, value, &out->backend_uids, error, len);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int set_vms(const struct key *k, json_object *v, struct vhostmigd_config *cfg, char *error, size_t len) {
        if (!json_object_is_type(v, json_type_object))
                return key_error(error, len, "\"%s\": expected an object of VM names", k->name);
        if (json_object_object_length(v) > CONFIG_MAX_VM_POLICIES)
                return key_error(error, len, "\"%s\": at most %u VMs", k->name, CONFIG_MAX_VM_POLICIES);
        cfg->n_vm_policies = 0;
        json_object_object_foreach(v, vm, value) {
                struct config_vm_policy *p = &cfg->vm_policies[cfg->n_vm_policies];
                memset(p, 0, sizeof(*p));
                int r = read_vm_policy(vm, value, p, error, len);
                if (r < 0)
                        return r;
                cfg->n_vm_policies++;
        }
        return 0;
}

/* The keys of "libvirt" that are numbers, with their bounds. */
#define LIBVIRT_KEY(n, field, lo, hi) \
        { "libvirt." n, KEY_UINT, offsetof(struct config_libvirt, field), lo, hi }
static const struct key libvirt_keys[] = {
        /* libvirt closes a connection after interval x count seconds without an answer; 0 would turn keepalive off. */
        LIBVIRT_KEY("keepalive_interval_s", keepalive_interval_s, 1, 3600),
        LIBVIRT_KEY("keepalive_count", keepalive_count, 1, 100),
        LIBVIRT_KEY("reconnect_min_ms", reconnect_min_ms, 10, 600000),
        LIBVIRT_KEY("reconnect_max_ms", reconnect_max_ms, 10, 3600000),
};

/* null turns the watcher off, as an absent key does; a URI is libvirt's to judge when it connects. */
static int set_libvirt_uri(json_object *v, struct config_libvirt *lv, char *error, size_t len) {
        if (json_object_is_type(v, json_type_null)) {
                lv->uri[0] = '\0';
                return 0;
        }
        const char *uri = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
        if (!uri || !*uri || strlen(uri) >= sizeof(lv->uri))
                return key_error(error, len, "\"libvirt.uri\": expected a libvirt URI (1..%zu characters) or null",
                                 sizeof(lv->uri) - 1);
        snprintf(lv->uri, sizeof(lv->uri), "%s", uri);
        return 0;
}

static int set_libvirt_key(const char *name, json_object *v, struct config_libvirt *lv, char *error, size_t len) {
        if (strcmp(name, "uri") == 0)
                return set_libvirt_uri(v, lv, error, len);
        for (size_t i = 0; i < sizeof(libvirt_keys) / sizeof(libvirt_keys[0]); i++) {
                const struct key *k = &libvirt_keys[i];
                if (strcmp(k->name + strlen("libvirt."), name) != 0)
                        continue;
                uint64_t n;
                int r = read_integer(k->name, v, k->min, k->max, &n, error, len);
                if (r == 0)
                        *(unsigned *) ((char *) lv + k->offset) = (unsigned) n;
                return r;
        }
        char where[QUOTED_MAX], q[QUOTED_MAX];
        snprintf(where, sizeof(where), "libvirt.%s", name);
        return key_error(error, len, "%s: unknown key", quoted(where, q));
}

static int set_libvirt(const struct key *k, json_object *v, struct vhostmigd_config *cfg, char *error, size_t len) {
        if (!json_object_is_type(v, json_type_object))
                return key_error(error, len, "\"%s\": expected an object", k->name);
        struct config_libvirt lv = cfg->libvirt;
        json_object_object_foreach(v, name, value) {
                int r = set_libvirt_key(name, value, &lv, error, len);
                if (r < 0)
                        return r;
        }
        if (lv.reconnect_min_ms > lv.reconnect_max_ms)
                return key_error(error, len,
                                 "\"libvirt.reconnect_min_ms\": %u is above \"libvirt.reconnect_max_ms\" %u",
                                 lv.reconnect_min_ms, lv.reconnect_max_ms);
        cfg->libvirt = lv;
        return 0;
}

typedef int (*key_setter)(const struct key *k, json_object *v, struct vhostmigd_config *cfg, char *error, size_t len);

static const key_setter setters[] = {
        [KEY_UINT] = set_uint,   [KEY_GPA] = set_gpa,   [KEY_LEVEL] = set_level, [KEY_MODE] = set_mode,
        [KEY_GROUP] = set_group, [KEY_UIDS] = set_uids, [KEY_VMS] = set_vms,     [KEY_LIBVIRT] = set_libvirt,
};

/*
 * JSON has no comments; a top-level key that starts with "//" is one (its
 * value is not read), so that the example configuration can explain itself
 * and still be copied as it is.
 */
static bool is_comment_key(const char *name) {
        return strncmp(name, "//", 2) == 0;
}

static int apply_key(struct vhostmigd_config *cfg, const char *name, json_object *v, char *error, size_t len) {
        if (is_comment_key(name))
                return 0;
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                const struct key *k = &keys[i];
                if (strcmp(k->name, name) == 0)
                        return setters[k->kind](k, v, cfg, error, len);
        }
        char q[QUOTED_MAX];
        return key_error(error, len, "%s: unknown key", quoted(name, q));
}

/*
 * json-c keeps the last of two equal keys in an object; a strict
 * configuration refuses them, since whichever one the writer meant, the other
 * was a mistake.  The tokener's stack frame holds the key just read until its
 * value is added: a key already in that object is a duplicate.
 */
static const char *duplicate_key(const json_tokener *tok) {
        const struct json_tokener_srec *frame = &tok->stack[tok->depth];
        if (!frame->obj_field_name || !frame->current || !json_object_is_type(frame->current, json_type_object))
                return NULL;
        return json_object_object_get_ex(frame->current, frame->obj_field_name, NULL) ? frame->obj_field_name : NULL;
}

static bool only_white_space(const char *s) {
        return s[strspn(s, " \t\r\n")] == '\0';
}

/*
 * One JSON document in json-c's strict mode (no comments, no trailing commas,
 * nothing after it), fed to the incremental tokener one byte at a time so
 * that every key can be checked the moment it has been read.
 */
static int parse_document(const char *text, json_object **out, char *error, size_t len) {
        json_tokener *tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        size_t n = strlen(text), i;
        json_object *obj = NULL;
        enum json_tokener_error jerr = json_tokener_continue;
        const char *dup = NULL;
        for (i = 0; i < n && !obj && jerr == json_tokener_continue && !dup; i++) {
                obj = json_tokener_parse_ex(tok, text + i, 1);
                jerr = json_tokener_get_error(tok);
                if (!obj && jerr == json_tokener_continue)
                        dup = duplicate_key(tok);
        }
        int r = 0;
        char q[QUOTED_MAX];
        if (dup)
                r = key_error(error, len, "%s: duplicate key at byte %zu", quoted(dup, q), i - 1);
        else if (!obj || jerr != json_tokener_success)
                r = key_error(error, len, "invalid JSON at byte %zu: %s", obj ? i - 1 : i,
                              jerr == json_tokener_continue ? "unexpected end of input"
                                                            : json_tokener_error_desc(jerr));
        else if (!only_white_space(text + i))
                r = key_error(error, len, "invalid JSON at byte %zu: trailing characters after the document",
                              i + strspn(text + i, " \t\r\n"));
        json_tokener_free(tok);
        if (r < 0) {
                json_object_put(obj);
                return r;
        }
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
                return key_error(error, len, "the top level must be an object");
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

static json_object *uid_list_to_json(const struct config_uid_list *list) {
        json_object *a = json_object_new_array();
        for (unsigned i = 0; i < list->n; i++)
                json_object_array_add(a, json_object_new_int64(list->uid[i]));
        return a;
}

static json_object *libvirt_to_json(const struct config_libvirt *lv) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "uri", lv->uri[0] ? json_object_new_string(lv->uri) : NULL);
        for (size_t i = 0; i < sizeof(libvirt_keys) / sizeof(libvirt_keys[0]); i++)
                json_object_object_add(
                        o, libvirt_keys[i].name + strlen("libvirt."),
                        json_object_new_int64(*(const unsigned *) ((const char *) lv + libvirt_keys[i].offset)));
        return o;
}

static json_object *config_to_object(const struct vhostmigd_config *cfg) {
        json_object *o = json_object_new_object();
        char mode[8];
        snprintf(mode, sizeof(mode), "%04o", cfg->server_socket_mode);
        json_object_object_add(o, "request_timeout_ms", json_object_new_int64(cfg->request_timeout_ms));
        json_object_object_add(o, "monitor_interval_ms", json_object_new_int64(cfg->monitor_interval_ms));
        json_object_object_add(o, "max_vms", json_object_new_int64(cfg->max_vms));
        json_object_object_add(o, "max_probes", json_object_new_int64(cfg->max_probes));
        json_object_object_add(o, "log_level", json_object_new_string(level_names[cfg->log_level]));
        json_object_object_add(o, "max_guest_phys_addr", json_object_new_uint64(cfg->max_guest_phys_addr));
        json_object_object_add(o, "server_socket_mode", json_object_new_string(mode));
        if (cfg->server_socket_group_name[0])
                json_object_object_add(o, "server_socket_group", json_object_new_string(cfg->server_socket_group_name));
        else if (cfg->server_socket_group != (gid_t) -1)
                json_object_object_add(o, "server_socket_group", json_object_new_int64(cfg->server_socket_group));
        json_object_object_add(o, "backend_uids", uid_list_to_json(&cfg->backend_uids));
        json_object *vms = json_object_new_object();
        for (unsigned i = 0; i < cfg->n_vm_policies; i++) {
                json_object *vm = json_object_new_object();
                json_object_object_add(vm, "backend_uids", uid_list_to_json(&cfg->vm_policies[i].backend_uids));
                json_object_object_add(vms, cfg->vm_policies[i].name, vm);
        }
        json_object_object_add(o, "vms", vms);
        json_object_object_add(o, "libvirt", libvirt_to_json(&cfg->libvirt));
        return o;
}

char *config_to_json(const struct vhostmigd_config *cfg) {
        json_object *o = config_to_object(cfg);
        char *s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
        return s;
}

static const char *json_text(json_object *v) {
        return v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
                 : "(unset)";
}

/* Appends "key old -> new" to *s (a growing string). */
static int append_change(char **s, const char *key, json_object *a, json_object *b) {
        char *next;
        if (asprintf(&next, "%s%s%s %s -> %s", *s, **s ? ", " : "", key, json_text(a), json_text(b)) < 0)
                return -ENOMEM;
        free(*s);
        *s = next;
        return 0;
}

/* Both documents have the same keys but server_socket_group, which only one may have. */
char *config_diff(const struct vhostmigd_config *old, const struct vhostmigd_config *new) {
        json_object *a = config_to_object(old), *b = config_to_object(new);
        char *s = strdup("");
        int r = s ? 0 : -ENOMEM;
        json_object_object_foreach(b, key, bv) {
                json_object *av = NULL;
                (void) json_object_object_get_ex(a, key, &av);
                if (r == 0 && !json_object_equal(av, bv))
                        r = append_change(&s, key, av, bv);
        }
        json_object_object_foreach(a, akey, av) {
                if (r == 0 && !json_object_object_get_ex(b, akey, NULL))
                        r = append_change(&s, akey, av, NULL);
        }
        json_object_put(a);
        json_object_put(b);
        if (r < 0) {
                free(s);
                return NULL;
        }
        return s;
}

const struct config_uid_list *config_backend_uids(const struct vhostmigd_config *cfg, const char *name) {
        for (unsigned i = 0; i < cfg->n_vm_policies; i++)
                if (strcmp(cfg->vm_policies[i].name, name) == 0)
                        return &cfg->vm_policies[i].backend_uids;
        return &cfg->backend_uids;
}
