/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl's verbs over D-Bus.  Reading goes through GetManagedObjects
 * (list, show: one consistent snapshot) or single properties (status);
 * properties are read generically from a{sv} and printed by their D-Bus
 * type, with a few names (sizes, feature masks) given a friendlier form.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "ctl-bus.h"
#include "proto/vhost-user-table.h"

#define BUS_NAME          "org.vhostmig1"
#define MANAGER_PATH      "/org/vhostmig1"
#define VM_PATH_PREFIX    "/org/vhostmig1/vm"
#define MANAGER_IFACE     "org.vhostmig1.Manager"
#define VM_IFACE          "org.vhostmig1.Vm"
#define DEVICE_IFACE      "org.vhostmig1.Device"
#define OUR_IFACE_PREFIX  "org.vhostmig1."
#define ERROR_NO_SUCH_VM  "org.vhostmig1.Error.NoSuchVm"
#define ERROR_NO_SUCH_DEV "org.vhostmig1.Error.NoSuchDevice"

#define _cleanup_(f) __attribute__((cleanup(f)))
#define streq(a, b) (strcmp((a), (b)) == 0)
#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

static void freep(void *p) { free(*(void **) p); }
#define _cleanup_free_ _cleanup_(freep)

static void strv_free(char **l) {
        for (char **i = l; i && *i; i++)
                free(*i);
        free(l);
}
static void strv_freep(char ***l) { strv_free(*l); }

static size_t strv_length(char **l) {
        size_t n = 0;
        while (l && l[n])
                n++;
        return n;
}

static void json_object_putp(json_object **o) { json_object_put(*o); }

static bool has_prefix(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int oom(const char *verb) {
        fprintf(stderr, "vhostmigctl: %s: out of memory\n", verb);
        return EXIT_BACKEND;
}

/* ---- connection and errors ------------------------------------------------------- */

static int bus_open(const char *verb, sd_bus **ret) {
        sd_bus *bus = NULL;
        int r;

        if (!arg_bus_address)
                r = sd_bus_open_system(&bus);
        else {
                r = sd_bus_new(&bus);
                if (r >= 0)
                        r = sd_bus_set_address(bus, arg_bus_address);
                if (r >= 0)
                        r = sd_bus_set_bus_client(bus, true);
                if (r >= 0)
                        r = sd_bus_start(bus);
        }
        if (r < 0) {
                sd_bus_unref(bus);
                fprintf(stderr, "vhostmigctl: %s: cannot connect to %s%s%s: %s\n", verb,
                        arg_bus_address ? "the bus at '" : "the system bus",
                        arg_bus_address ? arg_bus_address : "", arg_bus_address ? "'" : "", strerror(-r));
                return EXIT_BACKEND;
        }
        *ret = bus;
        return EXIT_OK;
}

/* What a call was about, to word "not found" errors; vm NULL for the manager. */
struct target {
        const char *vm;
        int dev;                   /* -1: the VM itself */
};

static char *vm_path(const char *vm) {
        char *p = NULL;
        return sd_bus_path_encode(VM_PATH_PREFIX, vm, &p) < 0 ? NULL : p;
}

static char *device_path(const char *vm, unsigned dev) {
        _cleanup_free_ char *vp = vm_path(vm);
        char *p = NULL;
        if (!vp || asprintf(&p, "%s/dev/%u", vp, dev) < 0)
                return NULL;
        return p;
}

static bool vm_exists(sd_bus *bus, const char *vm) {
        _cleanup_free_ char *path = vm_path(vm), *name = NULL;
        return path && sd_bus_get_property_string(bus, BUS_NAME, path, VM_IFACE, "Name", NULL, &name) >= 0;
}

static int not_found(sd_bus *bus, const char *verb, const struct target *t) {
        if (t->dev >= 0 && vm_exists(bus, t->vm))
                fprintf(stderr, "vhostmigctl: %s: VM '%s' has no device %d\n", verb, t->vm, t->dev);
        else
                fprintf(stderr, "vhostmigctl: %s: no such VM '%s'\n", verb, t->vm);
        return EXIT_NOT_FOUND;
}

/* Says what a failed call means and returns the exit code for it. */
static int call_failed(sd_bus *bus, const char *verb, const struct target *t, const sd_bus_error *e, int r) {
        const char *msg = sd_bus_error_is_set(e) && e->message && *e->message ? e->message : strerror(-r);

        if (sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER)) {
                fprintf(stderr, "vhostmigctl: %s: vhostmigd is not running (nothing owns %s on the bus)\n",
                        verb, BUS_NAME);
                return EXIT_BACKEND;
        }
        if (sd_bus_error_has_name(e, SD_BUS_ERROR_ACCESS_DENIED)) {
                fprintf(stderr, "vhostmigctl: %s: access denied: %s\n", verb, msg);
                return EXIT_DENIED;
        }
        if (t && t->vm && sd_bus_error_has_name(e, SD_BUS_ERROR_UNKNOWN_OBJECT))
                return not_found(bus, verb, t);

        fprintf(stderr, "vhostmigctl: %s: %s\n", verb, msg);
        return sd_bus_error_has_names(e, ERROR_NO_SUCH_VM, ERROR_NO_SUCH_DEV) ? EXIT_NOT_FOUND : EXIT_BACKEND;
}

static int bad_reply(const char *verb, int r) {
        fprintf(stderr, "vhostmigctl: %s: unexpected reply from vhostmigd: %s\n", verb, strerror(-r));
        return EXIT_BACKEND;
}

static int call(sd_bus *bus, const char *verb, const struct target *t, const char *path, const char *iface,
                const char *method, sd_bus_message **reply, const char *types, ...) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        va_list ap;

        va_start(ap, types);
        int r = sd_bus_call_methodv(bus, BUS_NAME, path, iface, method, &e, reply, types, ap);
        va_end(ap);
        return r < 0 ? call_failed(bus, verb, t, &e, r) : EXIT_OK;
}

static int call_message(sd_bus *bus, const char *verb, const struct target *t, sd_bus_message *m,
                        sd_bus_message **reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_call(bus, m, 0, &e, reply);
        return r < 0 ? call_failed(bus, verb, t, &e, r) : EXIT_OK;
}

/* A method without arguments of a VM (dev < 0) or of one of its devices. */
static int call_simple(const char *verb, const char *vm, int dev, const char *method, sd_bus_message **reply) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_free_ char *path = dev < 0 ? vm_path(vm) : device_path(vm, (unsigned) dev);
        const struct target t = { vm, dev };

        if (!path)
                return oom(verb);
        int ret = bus_open(verb, &bus);
        if (ret != EXIT_OK)
                return ret;
        return call(bus, verb, &t, path, dev < 0 ? VM_IFACE : DEVICE_IFACE, method, reply, "");
}

/* ---- properties ------------------------------------------------------------------ */

/* One property value; the D-Bus type says which member holds it. */
struct value {
        char type[8];
        uint64_t num;              /* b y q u t */
        char *str;                 /* s o g */
        char **strv;               /* as ao */
        uint32_t *nums;            /* au */
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

static void props_free(struct props *p) {
        for (size_t i = 0; i < p->n; i++) {
                free(p->v[i].name);
                free(p->v[i].v.str);
                strv_free(p->v[i].v.strv);
                free(p->v[i].v.nums);
        }
        free(p->v);
        *p = (struct props) {};
}

static const struct value *props_get(const struct props *p, const char *name) {
        for (size_t i = 0; i < p->n; i++)
                if (streq(p->v[i].name, name))
                        return &p->v[i].v;
        return NULL;
}

static uint64_t prop_num(const struct props *p, const char *name) {
        const struct value *v = props_get(p, name);
        return v ? v->num : 0;
}

static const char *prop_str(const struct props *p, const char *name) {
        const struct value *v = props_get(p, name);
        return v && v->str ? v->str : "";
}

static char **prop_strv(const struct props *p, const char *name) {
        const struct value *v = props_get(p, name);
        return v ? v->strv : NULL;
}

static int read_number(sd_bus_message *m, char type, uint64_t *ret) {
        union { int b; uint8_t y; uint16_t q; uint32_t u; uint64_t t; } n = {};
        int r = sd_bus_message_read_basic(m, type, &n);
        if (r < 0)
                return r;
        switch (type) {
        case 'b': *ret = !!n.b; break;
        case 'y': *ret = n.y; break;
        case 'q': *ret = n.q; break;
        case 'u': *ret = n.u; break;
        default: *ret = n.t; break;
        }
        return 0;
}

static int read_u32_array(sd_bus_message *m, struct value *v) {
        const void *p;
        size_t size;
        int r = sd_bus_message_read_array(m, 'u', &p, &size);
        if (r < 0)
                return r;
        v->n_nums = size / sizeof(uint32_t);
        v->nums = malloc(size ? size : 1);
        if (!v->nums)
                return -ENOMEM;
        memcpy(v->nums, p, size);
        return 0;
}

/* Reads the variant at the read pointer; types this tool does not know are skipped. */
static int read_variant(sd_bus_message *m, struct value *v) {
        const char *contents;
        int r = sd_bus_message_peek_type(m, NULL, &contents);
        if (r < 0)
                return r;
        snprintf(v->type, sizeof(v->type), "%s", contents);
        r = sd_bus_message_enter_container(m, 'v', contents);
        if (r < 0)
                return r;

        if (strlen(contents) == 1 && strchr("sog", contents[0])) {
                const char *s;
                r = sd_bus_message_read_basic(m, contents[0], &s);
                if (r >= 0 && !(v->str = strdup(s)))
                        r = -ENOMEM;
        } else if (strlen(contents) == 1 && strchr("byqut", contents[0]))
                r = read_number(m, contents[0], &v->num);
        else if (streq(contents, "as") || streq(contents, "ao"))
                r = sd_bus_message_read_strv(m, &v->strv);
        else if (streq(contents, "au"))
                r = read_u32_array(m, v);
        else
                r = sd_bus_message_skip(m, contents);
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

/* a{sv} */
static int read_props(sd_bus_message *m, struct props *out) {
        int r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *name;
                struct prop *grown = realloc(out->v, (out->n + 1) * sizeof(*out->v));
                if (!grown)
                        return -ENOMEM;
                out->v = grown;
                struct prop *p = &out->v[out->n];
                *p = (struct prop) {};
                if ((r = sd_bus_message_read_basic(m, 's', &name)) < 0)
                        return r;
                if (!(p->name = strdup(name)))
                        return -ENOMEM;
                out->n++;
                if ((r = read_variant(m, &p->v)) < 0)
                        return r;
                if ((r = sd_bus_message_exit_container(m)) < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

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

static void objects_free(struct objects *o) {
        for (size_t i = 0; i < o->n; i++) {
                free(o->v[i].path);
                free(o->v[i].iface);
                props_free(&o->v[i].props);
        }
        free(o->v);
        *o = (struct objects) {};
}

static const struct object *objects_find(const struct objects *o, const char *path, const char *iface) {
        for (size_t i = 0; i < o->n; i++)
                if (streq(o->v[i].path, path) && streq(o->v[i].iface, iface))
                        return &o->v[i];
        return NULL;
}

/* a{sa{sv}} of object `path`; interfaces other than ours are skipped. */
static int read_interfaces(sd_bus_message *m, const char *path, struct objects *out) {
        int r = sd_bus_message_enter_container(m, 'a', "{sa{sv}}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sa{sv}")) > 0) {
                const char *iface;
                if ((r = sd_bus_message_read_basic(m, 's', &iface)) < 0)
                        return r;
                if (!has_prefix(iface, OUR_IFACE_PREFIX))
                        r = sd_bus_message_skip(m, "a{sv}");
                else {
                        struct object *grown = realloc(out->v, (out->n + 1) * sizeof(*out->v));
                        if (!grown)
                                return -ENOMEM;
                        out->v = grown;
                        struct object *o = &out->v[out->n++];
                        *o = (struct object) { .path = strdup(path), .iface = strdup(iface) };
                        if (!o->path || !o->iface)
                                return -ENOMEM;
                        r = read_props(m, &o->props);
                }
                if (r < 0)
                        return r;
                if ((r = sd_bus_message_exit_container(m)) < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

/* a{oa{sa{sv}}} */
static int read_managed_objects(sd_bus_message *m, struct objects *out) {
        int r = sd_bus_message_enter_container(m, 'a', "{oa{sa{sv}}}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "oa{sa{sv}}")) > 0) {
                const char *path;
                if ((r = sd_bus_message_read_basic(m, 'o', &path)) < 0)
                        return r;
                if ((r = read_interfaces(m, path, out)) < 0)
                        return r;
                if ((r = sd_bus_message_exit_container(m)) < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

static int get_managed_objects(sd_bus *bus, const char *verb, struct objects *out) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int ret = call(bus, verb, NULL, MANAGER_PATH, "org.freedesktop.DBus.ObjectManager",
                       "GetManagedObjects", &reply, "");
        if (ret != EXIT_OK)
                return ret;
        int r = read_managed_objects(reply, out);
        return r < 0 ? bad_reply(verb, r) : EXIT_OK;
}

/* ---- formatting ------------------------------------------------------------------ */

/* "/org/vhostmig1/vm/NAME[/dev/N]" to its VM name and device number (-1 for the VM). */
static bool decode_object(const char *path, char **vm, int *dev) {
        _cleanup_free_ char *name = NULL, *num = NULL;

        *vm = NULL;
        *dev = -1;
        if (sd_bus_path_decode_many(path, VM_PATH_PREFIX "/%/dev/%", &name, &num) > 0) {
                char *end;
                errno = 0;
                unsigned long n = strtoul(num, &end, 10);
                if (errno || end == num || *end || n > INT32_MAX)
                        return false;
                *dev = (int) n;
        } else if (sd_bus_path_decode_many(path, VM_PATH_PREFIX "/%", &name) <= 0 || strchr(name, '/'))
                return false;
        *vm = name;
        name = NULL;
        return true;
}

/* "vm0", "vm0/dev/1", "manager", or the path itself. */
static char *short_object(const char *path) {
        _cleanup_free_ char *vm = NULL;
        char *s = NULL;
        int dev;

        if (streq(path, MANAGER_PATH))
                return strdup("manager");
        if (!decode_object(path, &vm, &dev))
                return strdup(path);
        if (dev < 0) {
                s = vm;
                vm = NULL;
                return s;
        }
        return asprintf(&s, "%s/dev/%d", vm, dev) < 0 ? NULL : s;
}

enum kind {
        KIND_PLAIN,
        KIND_BYTES,
        KIND_FEATURES,
        KIND_PROTOCOL_FEATURES,
};

static enum kind prop_kind(const char *name, const struct value *v) {
        if (!streq(v->type, "t"))
                return KIND_PLAIN;
        if (streq(name, "MemorySize") || streq(name, "LogSize"))
                return KIND_BYTES;
        if (streq(name, "Features") || streq(name, "AckedFeatures"))
                return KIND_FEATURES;
        if (streq(name, "ProtocolFeatures") || streq(name, "AckedProtocolFeatures"))
                return KIND_PROTOCOL_FEATURES;
        return KIND_PLAIN;
}

static void format_bytes(char *buf, size_t len, uint64_t bytes) {
        static const char units[] = "KMGTPE";
        unsigned u = 0;
        uint64_t div = 1;

        while (u < strlen(units) && bytes / div >= 1024) {
                div *= 1024;
                u++;
        }
        if (u == 0)
                snprintf(buf, len, "%" PRIu64 "B", bytes);
        else if (bytes % div == 0)
                snprintf(buf, len, "%" PRIu64 "%c", bytes / div, units[u - 1]);
        else
                snprintf(buf, len, "%.1f%c", (double) bytes / (double) div, units[u - 1]);
}

static void fput_quoted(FILE *f, const char *s) {
        fputc('"', f);
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;
                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c < 0x20 || c == 0x7f)
                        fprintf(f, "\\x%02x", c);
                else
                        fputc(c, f);
        }
        fputc('"', f);
}

/* A string element: object paths shortened; quoted in `watch` lines. */
static void fput_element(FILE *f, const char *s, bool is_path, bool quoted) {
        _cleanup_free_ char *shortened = is_path ? short_object(s) : NULL;
        if (is_path)
                fputs(shortened ? shortened : s, f);
        else if (quoted)
                fput_quoted(f, s);
        else
                fputs(s, f);
}

static void fput_array(FILE *f, const struct value *v, bool quoted, const char *sep) {
        bool strings = v->type[1] != 'u';
        size_t n = strings ? strv_length(v->strv) : v->n_nums;
        if (quoted)
                fputc('[', f);
        for (size_t i = 0; i < n; i++) {
                if (i > 0)
                        fputs(sep, f);
                if (strings)
                        fput_element(f, v->strv[i], streq(v->type, "ao"), quoted);
                else
                        fprintf(f, "%" PRIu32, v->nums[i]);
        }
        if (quoted)
                fputc(']', f);
        else if (n == 0)
                fputs("(none)", f);
}

/*
 * A value on one line.  `quoted` (for watch): strings quoted, arrays
 * bracketed, feature masks followed by their names.  Otherwise (for show):
 * strings as they are, "(none)" for empty ones.
 */
static void fput_value(FILE *f, const char *name, const struct value *v, bool quoted) {
        enum kind kind = prop_kind(name, v);
        char buf[32];

        if (streq(v->type, "b"))
                fputs(v->num ? "yes" : "no", f);
        else if (kind == KIND_BYTES && v->num >= 1024) {
                format_bytes(buf, sizeof(buf), v->num);
                fprintf(f, "%" PRIu64 " (%s)", v->num, buf);
        } else if (kind == KIND_FEATURES || kind == KIND_PROTOCOL_FEATURES) {
                fprintf(f, "0x%" PRIx64, v->num);
                if (quoted && v->num) {
                        char names[2048];
                        vhu_format_features(names, sizeof(names), v->num, kind == KIND_PROTOCOL_FEATURES, " ");
                        fprintf(f, " (%s)", names);
                }
        } else if (strlen(v->type) == 1 && strchr("yqut", v->type[0]))
                fprintf(f, "%" PRIu64, v->num);
        else if (v->str && streq(v->type, "o"))
                fput_element(f, v->str, true, quoted);
        else if (v->str && quoted)
                fput_quoted(f, v->str);
        else if (v->str)
                fputs(*v->str ? v->str : "(none)", f);
        else if (streq(v->type, "as") || streq(v->type, "ao") || streq(v->type, "au"))
                fput_array(f, v, quoted, quoted ? ", " : " ");
        else
                fprintf(f, "(a value of type %s)", v->type);
}

/* "MemorySize" -> "memory_size" */
static char *snake_case(const char *name) {
        char *s = malloc(2 * strlen(name) + 1), *p = s;
        if (!s)
                return NULL;
        for (const char *c = name; *c; c++) {
                if (*c >= 'A' && *c <= 'Z') {
                        if (c != name)
                                *p++ = '_';
                        *p++ = (char) (*c - 'A' + 'a');
                } else
                        *p++ = *c;
        }
        *p = 0;
        return s;
}

static json_object *strv_json(char **l) {
        json_object *a = json_object_new_array();
        for (char **i = l; i && *i; i++)
                json_object_array_add(a, json_object_new_string(*i));
        return a;
}

static json_object *value_json(const char *name, const struct value *v) {
        enum kind kind = prop_kind(name, v);

        if (kind == KIND_FEATURES || kind == KIND_PROTOCOL_FEATURES)
                return hex_json(v->num);
        if (streq(v->type, "b"))
                return json_object_new_boolean(v->num != 0);
        if (streq(v->type, "t"))
                return json_object_new_uint64(v->num);
        if (strlen(v->type) == 1 && strchr("yqu", v->type[0]))
                return json_object_new_int64((int64_t) v->num);
        if (v->str)
                return json_object_new_string(v->str);
        if (streq(v->type, "as") || streq(v->type, "ao"))
                return strv_json(v->strv);
        if (streq(v->type, "au")) {
                json_object *a = json_object_new_array();
                for (size_t i = 0; i < v->n_nums; i++)
                        json_object_array_add(a, json_object_new_int64(v->nums[i]));
                return a;
        }
        return NULL;
}

/* The names of a feature mask's bits, for the property `name`, or NULL when it is no mask. */
static json_object *value_names_json(const char *name, const struct value *v) {
        enum kind kind = prop_kind(name, v);
        if (kind != KIND_FEATURES && kind != KIND_PROTOCOL_FEATURES)
                return NULL;
        return feature_names_json(v->num, kind == KIND_PROTOCOL_FEATURES);
}

/* Adds every property as "snake_case": value; a feature mask also as "..._feature_names". */
static int props_to_json(const struct props *p, json_object *o, const char *skip) {
        for (size_t i = 0; i < p->n; i++) {
                const struct prop *pr = &p->v[i];
                if (skip && streq(pr->name, skip))
                        continue;
                _cleanup_free_ char *key = snake_case(pr->name);
                if (!key)
                        return -ENOMEM;
                json_object_object_add(o, key, value_json(pr->name, &pr->v));
                json_object *names = value_names_json(pr->name, &pr->v);
                if (names) {
                        /* "acked_features" -> "acked_feature_names" */
                        size_t stem = strlen(key) - strlen("features");
                        _cleanup_free_ char *nkey = NULL;
                        if (asprintf(&nkey, "%.*sfeature_names", (int) stem, key) < 0) {
                                json_object_put(names);
                                return -ENOMEM;
                        }
                        json_object_object_add(o, nkey, names);
                }
        }
        return 0;
}

static void print_json(json_object *o) {
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
}

#define LABEL_WIDTH 24

/* One property of `show`: feature masks with their names below, string arrays one per line. */
static void print_prop_text(const struct prop *p) {
        char label[64];
        enum kind kind = prop_kind(p->name, &p->v);

        snprintf(label, sizeof(label), "%s:", p->name);
        if (streq(p->v.type, "as") && strv_length(p->v.strv) > 0) {
                for (char **s = p->v.strv; *s; s++)
                        printf("  %-*s %s\n", LABEL_WIDTH, s == p->v.strv ? label : "", *s);
                return;
        }
        printf("  %-*s ", LABEL_WIDTH, label);
        fput_value(stdout, p->name, &p->v, false);
        putchar('\n');
        if (kind == KIND_FEATURES || kind == KIND_PROTOCOL_FEATURES) {
                char names[2048];
                vhu_format_features(names, sizeof(names), p->v.num, kind == KIND_PROTOCOL_FEATURES, " ");
                printf("  %-*s %s\n", LABEL_WIDTH, "", names[0] ? names : "(none)");
        }
}

/* ---- status, list, show ---------------------------------------------------------- */

int ctl_status(void) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *version = NULL;
        _cleanup_(strv_freep) char **vms = NULL;
        int r, ret;

        if ((ret = bus_open("status", &bus)) != EXIT_OK)
                return ret;
        r = sd_bus_get_property_string(bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "Version", &e, &version);
        if (r < 0)
                return call_failed(bus, "status", NULL, &e, r);
        r = sd_bus_get_property(bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "Vms", &e, &reply, "ao");
        if (r < 0)
                return call_failed(bus, "status", NULL, &e, r);
        if ((r = sd_bus_message_read_strv(reply, &vms)) < 0)
                return bad_reply("status", r);

        if (arg_json) {
                _cleanup_(json_object_putp) json_object *o = json_object_new_object();
                json_object_object_add(o, "version", json_object_new_string(version));
                json_object_object_add(o, "vms", json_object_new_int64((int64_t) strv_length(vms)));
                print_json(o);
        } else
                printf("%-9s %s\n%-9s %zu\n", "Version:", version, "VMs:", strv_length(vms));
        return EXIT_OK;
}

static int compare_vm_names(const void *a, const void *b) {
        const struct object *x = *(const struct object *const *) a, *y = *(const struct object *const *) b;
        return strcmp(prop_str(&x->props, "Name"), prop_str(&y->props, "Name"));
}

/* The VM objects, sorted by name; the array points into `all`. */
static const struct object **vm_objects(const struct objects *all, size_t *n) {
        const struct object **vms = calloc(all->n + 1, sizeof(*vms));
        if (!vms)
                return NULL;
        *n = 0;
        for (size_t i = 0; i < all->n; i++)
                if (streq(all->v[i].iface, VM_IFACE))
                        vms[(*n)++] = &all->v[i];
        qsort(vms, *n, sizeof(*vms), compare_vm_names);
        return vms;
}

static void print_list_json(const struct object **vms, size_t n) {
        _cleanup_(json_object_putp) json_object *a = json_object_new_array();
        for (size_t i = 0; i < n; i++) {
                const struct props *p = &vms[i]->props;
                json_object *o = json_object_new_object();
                json_object_object_add(o, "name", json_object_new_string(prop_str(p, "Name")));
                json_object_object_add(o, "object", json_object_new_string(vms[i]->path));
                json_object_object_add(o, "memory_size", json_object_new_uint64(prop_num(p, "MemorySize")));
                json_object_object_add(o, "devices", json_object_new_int64((int64_t) strv_length(prop_strv(p, "Devices"))));
                json_object_object_add(o, "logging", json_object_new_boolean(prop_num(p, "Logging") != 0));
                json_object_object_add(o, "migratable", json_object_new_boolean(prop_num(p, "MigrationBlocked") == 0));
                json_object_array_add(a, o);
        }
        print_json(a);
}

static void print_list_text(const struct object **vms, size_t n) {
        int width = (int) strlen("NAME");

        if (n == 0) {
                puts("No VMs.");
                return;
        }
        for (size_t i = 0; i < n; i++) {
                int len = (int) strlen(prop_str(&vms[i]->props, "Name"));
                if (len > width)
                        width = len;
        }
        printf("%-*s  %8s  %7s  %7s  %s\n", width, "NAME", "MEMORY", "DEVICES", "LOGGING", "MIGRATABLE");
        for (size_t i = 0; i < n; i++) {
                const struct props *p = &vms[i]->props;
                char size[32];
                format_bytes(size, sizeof(size), prop_num(p, "MemorySize"));
                printf("%-*s  %8s  %7zu  %7s  %s\n", width, prop_str(p, "Name"), size,
                       strv_length(prop_strv(p, "Devices")), prop_num(p, "Logging") ? "on" : "off",
                       prop_num(p, "MigrationBlocked") ? "no" : "yes");
        }
}

int ctl_list(void) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(objects_free) struct objects all = {};
        _cleanup_free_ const struct object **vms = NULL;
        size_t n;
        int ret;

        if ((ret = bus_open("list", &bus)) != EXIT_OK)
                return ret;
        if ((ret = get_managed_objects(bus, "list", &all)) != EXIT_OK)
                return ret;
        if (!(vms = vm_objects(&all, &n)))
                return oom("list");
        if (arg_json)
                print_list_json(vms, n);
        else
                print_list_text(vms, n);
        return EXIT_OK;
}

static int device_number(const char *path) {
        _cleanup_free_ char *vm = NULL;
        int dev;
        return decode_object(path, &vm, &dev) ? dev : -1;
}

static int show_json(const struct objects *all, const struct object *vm) {
        _cleanup_(json_object_putp) json_object *o = json_object_new_object();
        json_object *devices = json_object_new_array();

        json_object_object_add(o, "object", json_object_new_string(vm->path));
        if (props_to_json(&vm->props, o, "Devices") < 0) {
                json_object_put(devices);
                return -ENOMEM;
        }
        json_object_object_add(o, "devices", devices);
        for (char **d = prop_strv(&vm->props, "Devices"); d && *d; d++) {
                const struct object *dev = objects_find(all, *d, DEVICE_IFACE);
                if (!dev)
                        continue;       /* removed between the two snapshots of the daemon */
                json_object *dj = json_object_new_object();
                json_object_array_add(devices, dj);
                json_object_object_add(dj, "number", json_object_new_int64(device_number(*d)));
                json_object_object_add(dj, "object", json_object_new_string(*d));
                if (props_to_json(&dev->props, dj, NULL) < 0)
                        return -ENOMEM;
        }
        print_json(o);
        return 0;
}

static void show_text(const struct objects *all, const struct object *vm) {
        printf("VM %s (%s)\n", prop_str(&vm->props, "Name"), vm->path);
        for (size_t i = 0; i < vm->props.n; i++)
                print_prop_text(&vm->props.v[i]);
        for (char **d = prop_strv(&vm->props, "Devices"); d && *d; d++) {
                const struct object *dev = objects_find(all, *d, DEVICE_IFACE);
                if (!dev)
                        continue;
                printf("\nDevice %d (%s)\n", device_number(*d), *d);
                for (size_t i = 0; i < dev->props.n; i++)
                        print_prop_text(&dev->props.v[i]);
        }
}

int ctl_show(const char *name) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(objects_free) struct objects all = {};
        _cleanup_free_ char *path = vm_path(name);
        int ret;

        if (!path)
                return oom("show");
        if ((ret = bus_open("show", &bus)) != EXIT_OK)
                return ret;
        if ((ret = get_managed_objects(bus, "show", &all)) != EXIT_OK)
                return ret;
        const struct object *vm = objects_find(&all, path, VM_IFACE);
        if (!vm) {
                fprintf(stderr, "vhostmigctl: show: no such VM '%s'\n", name);
                return EXIT_NOT_FOUND;
        }
        if (!arg_json)
                show_text(&all, vm);
        else if (show_json(&all, vm) < 0)
                return oom("show");
        return EXIT_OK;
}

/* ---- VMs and devices ------------------------------------------------------------- */

static int append_regions(sd_bus_message *m, const char *vm, const struct ctl_region *regions, unsigned n) {
        int r = sd_bus_message_append(m, "s", vm);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(httt)");
        for (unsigned i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append(m, "(httt)", regions[i].fd, regions[i].gpa, regions[i].size,
                                          regions[i].offset);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

int ctl_vm_create(const char *vm, const struct ctl_region *regions, unsigned n) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *path;
        int r, ret;

        if ((ret = bus_open("vm create", &bus)) != EXIT_OK)
                return ret;
        r = sd_bus_message_new_method_call(bus, &m, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "CreateVm");
        if (r >= 0)
                r = append_regions(m, vm, regions, n);
        if (r < 0) {
                fprintf(stderr, "vhostmigctl: vm create: cannot build the call: %s\n", strerror(-r));
                return EXIT_BACKEND;
        }
        if ((ret = call_message(bus, "vm create", NULL, m, &reply)) != EXIT_OK)
                return ret;
        if ((r = sd_bus_message_read(reply, "o", &path)) < 0)
                return bad_reply("vm create", r);

        if (arg_json) {
                _cleanup_(json_object_putp) json_object *o = json_object_new_object();
                json_object_object_add(o, "vm", json_object_new_string(vm));
                json_object_object_add(o, "object", json_object_new_string(path));
                print_json(o);
        } else
                printf("VM %s created (%s).\n", vm, path);
        return EXIT_OK;
}

int ctl_vm_destroy(const char *vm) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        const struct target t = { vm, -1 };
        int ret = bus_open("vm destroy", &bus);
        if (ret != EXIT_OK)
                return ret;
        return call(bus, "vm destroy", &t, MANAGER_PATH, MANAGER_IFACE, "DestroyVm", NULL, "s", vm);
}

static int append_device(sd_bus_message *m, const struct ctl_device *d) {
        int r = sd_bus_message_append(m, "sbtusq", d->socket, d->server, d->features, d->queue_pairs,
                                      d->mac, d->mtu);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(uttthh)");
        for (unsigned i = 0; r >= 0 && i < d->n_queues; i++) {
                const struct ctl_queue *q = &d->queues[i];
                r = sd_bus_message_append(m, "(uttthh)", q->size, q->desc, q->avail, q->used, q->kick_fd,
                                          q->call_fd);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

int ctl_device_add(const char *vm, const struct ctl_device *dev) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *vpath = vm_path(vm);
        const struct target t = { vm, -1 };
        const char *path;
        int r, ret;

        if (!vpath)
                return oom("device add");
        if ((ret = bus_open("device add", &bus)) != EXIT_OK)
                return ret;
        r = sd_bus_message_new_method_call(bus, &m, BUS_NAME, vpath, VM_IFACE, "AddDevice");
        if (r >= 0)
                r = append_device(m, dev);
        if (r < 0) {
                fprintf(stderr, "vhostmigctl: device add: cannot build the call: %s\n", strerror(-r));
                return EXIT_BACKEND;
        }
        if ((ret = call_message(bus, "device add", &t, m, &reply)) != EXIT_OK)
                return ret;
        if ((r = sd_bus_message_read(reply, "o", &path)) < 0)
                return bad_reply("device add", r);

        int number = device_number(path);
        if (arg_json) {
                _cleanup_(json_object_putp) json_object *o = json_object_new_object();
                json_object_object_add(o, "vm", json_object_new_string(vm));
                json_object_object_add(o, "device", json_object_new_int64(number));
                json_object_object_add(o, "object", json_object_new_string(path));
                print_json(o);
        } else
                printf("Device %d added to VM %s (%s).\n", number, vm, path);
        return EXIT_OK;
}

int ctl_device_remove(const char *vm, unsigned dev) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_free_ char *vpath = vm_path(vm), *dpath = device_path(vm, dev);
        const struct target t = { vm, (int) dev };

        if (!vpath || !dpath)
                return oom("device remove");
        int ret = bus_open("device remove", &bus);
        if (ret != EXIT_OK)
                return ret;
        return call(bus, "device remove", &t, vpath, VM_IFACE, "RemoveDevice", NULL, "o", dpath);
}

/* ---- logging, announce, reconnect ------------------------------------------------ */

int ctl_logging_start(const char *vm) {
        return call_simple("logging start", vm, -1, "StartLogging", NULL);
}

int ctl_logging_stop(const char *vm) {
        return call_simple("logging stop", vm, -1, "StopLogging", NULL);
}

int ctl_logging_harvest(const char *vm) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t new_pages, dirty_pages;
        int r, ret;

        if ((ret = call_simple("logging harvest", vm, -1, "Harvest", &reply)) != EXIT_OK)
                return ret;
        if ((r = sd_bus_message_read(reply, "tt", &new_pages, &dirty_pages)) < 0)
                return bad_reply("logging harvest", r);
        if (arg_json) {
                _cleanup_(json_object_putp) json_object *o = json_object_new_object();
                json_object_object_add(o, "new_pages", json_object_new_uint64(new_pages));
                json_object_object_add(o, "dirty_pages", json_object_new_uint64(dirty_pages));
                print_json(o);
        } else
                printf("%-12s %" PRIu64 "\n%-12s %" PRIu64 "\n", "New pages:", new_pages, "Dirty pages:", dirty_pages);
        return EXIT_OK;
}

int ctl_announce(const char *vm, int dev) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t sent = 1;
        int r, ret;

        if ((ret = call_simple("announce", vm, dev, "Announce", &reply)) != EXIT_OK)
                return ret;
        if (dev < 0 && (r = sd_bus_message_read(reply, "u", &sent)) < 0)
                return bad_reply("announce", r);
        if (arg_json) {
                _cleanup_(json_object_putp) json_object *o = json_object_new_object();
                json_object_object_add(o, "sent", json_object_new_int64(sent));
                print_json(o);
        } else
                printf("%" PRIu32 " announcement%s sent.\n", sent, sent == 1 ? "" : "s");
        return EXIT_OK;
}

int ctl_reconnect(const char *vm, unsigned dev) {
        return call_simple("reconnect", vm, (int) dev, "Reconnect", NULL);
}

/* ---- watch ----------------------------------------------------------------------- */

struct watch {
        char *vm_path;             /* only this VM and its devices; NULL: everything */
};

static bool watch_wants(const struct watch *w, const char *path) {
        if (!w->vm_path)
                return true;
        size_t n = strlen(w->vm_path);
        return strncmp(path, w->vm_path, n) == 0 && (path[n] == 0 || path[n] == '/');
}

/* RFC 3339 local time with milliseconds: 2024-05-01T12:00:00.123+02:00 */
static void timestamp(char *buf, size_t len) {
        struct timespec ts;
        struct tm tm;
        char date[32], zone[8];

        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
        if (strftime(zone, sizeof(zone), "%z", &tm) != 5)
                snprintf(zone, sizeof(zone), "+0000");
        snprintf(buf, len, "%s.%03ld%.3s:%s", date, ts.tv_nsec / 1000000, zone, zone + 3);
}

/* A JSON event line with the time, the event and the object (with its VM and device). */
static json_object *event_json(const char *time, const char *event, const char *path) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "time", json_object_new_string(time));
        json_object_object_add(o, "event", json_object_new_string(event));
        if (!path)
                return o;
        json_object_object_add(o, "object", json_object_new_string(path));
        _cleanup_free_ char *vm = NULL;
        int dev;
        if (decode_object(path, &vm, &dev)) {
                json_object_object_add(o, "vm", json_object_new_string(vm));
                if (dev >= 0)
                        json_object_object_add(o, "device", json_object_new_int64(dev));
        }
        return o;
}

static void emit_json_line(json_object *o) {
        print_json(o);
        json_object_put(o);
        fflush(stdout);
}

static void emit_text_line(const char *time, const char *path, const char *what, const struct prop *p) {
        _cleanup_free_ char *obj = path ? short_object(path) : strdup("vhostmigd");
        printf("%s %s %s", time, obj ? obj : path, what ? what : "");
        if (p) {
                printf("%s=", p->name);
                fput_value(stdout, p->name, &p->v, true);
        }
        putchar('\n');
        fflush(stdout);
}

static void print_change(const char *path, const char *iface, const struct prop *p) {
        char time[64];
        timestamp(time, sizeof(time));
        if (!arg_json) {
                emit_text_line(time, path, NULL, p);
                return;
        }
        json_object *o = event_json(time, "changed", path);
        json_object_object_add(o, "interface", json_object_new_string(iface));
        json_object_object_add(o, "property", json_object_new_string(p->name));
        json_object_object_add(o, "value", value_json(p->name, &p->v));
        json_object *names = value_names_json(p->name, &p->v);
        if (names)
                json_object_object_add(o, "names", names);
        emit_json_line(o);
}

static void print_invalidated(const char *path, const char *iface, const char *name) {
        char time[64], what[256];
        timestamp(time, sizeof(time));
        if (!arg_json) {
                snprintf(what, sizeof(what), "%s (changed, value not sent)", name);
                emit_text_line(time, path, what, NULL);
                return;
        }
        json_object *o = event_json(time, "invalidated", path);
        json_object_object_add(o, "interface", json_object_new_string(iface));
        json_object_object_add(o, "property", json_object_new_string(name));
        emit_json_line(o);
}

static void watch_warn(sd_bus_message *m, int r) {
        fprintf(stderr, "vhostmigctl: watch: cannot read %s from %s: %s\n", sd_bus_message_get_member(m),
                sd_bus_message_get_path(m), strerror(-r));
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const struct watch *w = userdata;
        const char *path = sd_bus_message_get_path(m), *iface;
        _cleanup_(props_free) struct props changed = {};
        _cleanup_(strv_freep) char **invalidated = NULL;
        int r;

        (void) error;
        if (!path || !watch_wants(w, path))
                return 0;
        if ((r = sd_bus_message_read_basic(m, 's', &iface)) < 0 ||
            (r = read_props(m, &changed)) < 0 ||
            (r = sd_bus_message_read_strv(m, &invalidated)) < 0) {
                watch_warn(m, r);
                return 0;
        }
        if (!has_prefix(iface, OUR_IFACE_PREFIX))
                return 0;
        for (size_t i = 0; i < changed.n; i++)
                print_change(path, iface, &changed.v[i]);
        for (char **s = invalidated; s && *s; s++)
                print_invalidated(path, iface, *s);
        return 0;
}

static int on_interfaces_added(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const struct watch *w = userdata;
        _cleanup_(objects_free) struct objects added = {};
        const char *path;
        char time[64];
        int r;

        (void) error;
        if ((r = sd_bus_message_read_basic(m, 'o', &path)) < 0 || (r = read_interfaces(m, path, &added)) < 0) {
                watch_warn(m, r);
                return 0;
        }
        if (!watch_wants(w, path) || added.n == 0)
                return 0;
        timestamp(time, sizeof(time));
        if (!arg_json) {
                emit_text_line(time, path, "added", NULL);
                return 0;
        }
        json_object *o = event_json(time, "added", path), *props = json_object_new_object();
        json_object_object_add(o, "interface", json_object_new_string(added.v[0].iface));
        json_object_object_add(o, "properties", props);
        for (size_t i = 0; i < added.n; i++)
                (void) props_to_json(&added.v[i].props, props, NULL);
        emit_json_line(o);
        return 0;
}

static int on_interfaces_removed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const struct watch *w = userdata;
        _cleanup_(strv_freep) char **ifaces = NULL;
        const char *path;
        char time[64];
        int r;

        (void) error;
        if ((r = sd_bus_message_read_basic(m, 'o', &path)) < 0 || (r = sd_bus_message_read_strv(m, &ifaces)) < 0) {
                watch_warn(m, r);
                return 0;
        }
        if (!watch_wants(w, path))
                return 0;
        /*
         * Our interfaces, or any object in our VM namespace: an object that
         * is already gone when the signal is sent is listed with the
         * standard interfaces only.
         */
        _cleanup_free_ char *vm = NULL;
        int dev;
        bool ours = decode_object(path, &vm, &dev);
        for (char **i = ifaces; i && *i; i++)
                ours = ours || has_prefix(*i, OUR_IFACE_PREFIX);
        if (!ours)
                return 0;
        timestamp(time, sizeof(time));
        if (!arg_json)
                emit_text_line(time, path, "removed", NULL);
        else
                emit_json_line(event_json(time, "removed", path));
        return 0;
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *name, *old_owner, *new_owner;
        char time[64];
        int r;

        (void) userdata;
        (void) error;
        if ((r = sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner)) < 0) {
                watch_warn(m, r);
                return 0;
        }
        if (!streq(name, BUS_NAME))
                return 0;
        timestamp(time, sizeof(time));
        if (!arg_json) {
                emit_text_line(time, NULL, *new_owner ? "started" : "stopped", NULL);
                return 0;
        }
        json_object *o = event_json(time, "daemon", NULL);
        json_object_object_add(o, "running", json_object_new_boolean(*new_owner != 0));
        emit_json_line(o);
        return 0;
}

static int on_exit_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) si;
        (void) userdata;
        return sd_event_exit(sd_event_source_get_event(s), EXIT_OK);
}

static int watch_subscribe(sd_bus *bus, struct watch *w) {
        int r = sd_bus_match_signal(bus, NULL, BUS_NAME, NULL, "org.freedesktop.DBus.Properties",
                                    "PropertiesChanged", on_properties_changed, w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, BUS_NAME, MANAGER_PATH, "org.freedesktop.DBus.ObjectManager",
                                        "InterfacesAdded", on_interfaces_added, w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, BUS_NAME, MANAGER_PATH, "org.freedesktop.DBus.ObjectManager",
                                        "InterfacesRemoved", on_interfaces_removed, w);
        if (r >= 0)
                r = sd_bus_add_match(bus, NULL,
                                     "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                                     "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                                     "arg0='" BUS_NAME "'",
                                     on_name_owner_changed, w);
        return r;
}

static int watch_loop(sd_bus *bus, struct watch *w) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        sigset_t mask;
        int r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return -errno;
        if ((r = sd_event_default(&event)) < 0 ||
            (r = sd_event_add_signal(event, NULL, SIGINT, on_exit_signal, NULL)) < 0 ||
            (r = sd_event_add_signal(event, NULL, SIGTERM, on_exit_signal, NULL)) < 0 ||
            (r = sd_bus_attach_event(bus, event, SD_EVENT_PRIORITY_NORMAL)) < 0 ||
            (r = sd_bus_set_exit_on_disconnect(bus, true)) < 0 ||
            (r = watch_subscribe(bus, w)) < 0)
                return r;
        return sd_event_loop(event);
}

int ctl_watch(const char *vm) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        struct watch w = {};
        int ret, r;

        if (vm && !(w.vm_path = vm_path(vm)))
                return oom("watch");
        ret = bus_open("watch", &bus);
        if (ret == EXIT_OK) {
                r = watch_loop(bus, &w);
                if (r < 0)
                        fprintf(stderr, "vhostmigctl: watch: %s\n", strerror(-r));
                else if (r > 0)
                        fprintf(stderr, "vhostmigctl: watch: the connection to the bus was lost\n");
                ret = r == 0 ? EXIT_OK : EXIT_BACKEND;
        }
        free(w.vm_path);
        return ret;
}
