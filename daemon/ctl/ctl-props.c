/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Properties as vhostmigctl reads and prints them (see ctl-props.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/common/cli-util.h"
#include "ctl-conn.h"
#include "ctl-props.h"
#include "proto/vhost-user-table.h"

void strv_free(char **l) {
        for (char **i = l; i && *i; i++)
                free(*i);
        free(l);
}

size_t strv_length(char **l) {
        size_t n = 0;
        while (l && l[n])
                n++;
        return n;
}

static bool has_prefix(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool has_suffix(const char *s, const char *suffix) {
        size_t n = strlen(s), m = strlen(suffix);
        return n >= m && streq(s + n - m, suffix);
}

/* ---- reading ---------------------------------------------------------------------- */

void props_free(struct props *p) {
        for (size_t i = 0; i < p->n; i++) {
                free(p->v[i].name);
                free(p->v[i].v.str);
                strv_free(p->v[i].v.strv);
                free(p->v[i].v.nums);
        }
        free(p->v);
        *p = (struct props){};
}

static void prop_free_value(struct value *v) {
        free(v->str);
        strv_free(v->strv);
        free(v->nums);
        *v = (struct value){};
}

int props_merge(struct props *into, struct props *from) {
        for (size_t i = 0; i < from->n; i++) {
                struct prop *src = &from->v[i], *dst = NULL;
                for (size_t k = 0; k < into->n && !dst; k++)
                        if (streq(into->v[k].name, src->name))
                                dst = &into->v[k];
                if (!dst) {
                        struct prop *grown = realloc(into->v, (into->n + 1) * sizeof(*into->v));
                        if (!grown)
                                return -ENOMEM;
                        into->v = grown;
                        dst = &into->v[into->n++];
                        *dst = (struct prop){ .name = src->name };
                        src->name = NULL;
                } else
                        prop_free_value(&dst->v);
                /* The value moves: `from` keeps nothing that `into` owns. */
                dst->v = src->v;
                src->v = (struct value){};
        }
        props_free(from);
        return 0;
}

static const struct value *props_get(const struct props *p, const char *name) {
        for (size_t i = 0; i < p->n; i++)
                if (streq(p->v[i].name, name))
                        return &p->v[i].v;
        return NULL;
}

uint64_t prop_num(const struct props *p, const char *name) {
        const struct value *v = props_get(p, name);
        return v ? v->num : 0;
}

const char *prop_str(const struct props *p, const char *name) {
        const struct value *v = props_get(p, name);
        return v && v->str ? v->str : "";
}

char **prop_strv(const struct props *p, const char *name) {
        const struct value *v = props_get(p, name);
        return v ? v->strv : NULL;
}

static int read_number(sd_bus_message *m, char type, uint64_t *ret) {
        union {
                int b;
                uint8_t y;
                uint16_t q;
                uint32_t u;
                uint64_t t;
        } n = {};
        int r = sd_bus_message_read_basic(m, type, &n);
        if (r < 0)
                return r;
        switch (type) {
        case 'b':
                *ret = !!n.b;
                break;
        case 'y':
                *ret = n.y;
                break;
        case 'q':
                *ret = n.q;
                break;
        case 'u':
                *ret = n.u;
                break;
        default:
                *ret = n.t;
                break;
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
int read_props(sd_bus_message *m, struct props *out) {
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
                *p = (struct prop){};
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
void objects_free(struct objects *o) {
        for (size_t i = 0; i < o->n; i++) {
                free(o->v[i].path);
                free(o->v[i].iface);
                props_free(&o->v[i].props);
        }
        free(o->v);
        *o = (struct objects){};
}

const struct object *objects_find(const struct objects *o, const char *path, const char *iface) {
        for (size_t i = 0; i < o->n; i++)
                if (streq(o->v[i].path, path) && streq(o->v[i].iface, iface))
                        return &o->v[i];
        return NULL;
}

/* a{sa{sv}} of object `path`; interfaces other than ours are skipped. */
int read_interfaces(sd_bus_message *m, const char *path, struct objects *out) {
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
                        *o = (struct object){ .path = strdup(path), .iface = strdup(iface) };
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
int read_managed_objects(sd_bus_message *m, struct objects *out) {
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

/* ---- formatting ------------------------------------------------------------------ */

/* "vm0", "vm0/dev/1", "manager", or the path itself. */
char *short_object(const char *path) {
        _cleanup_free_ char *vm = NULL;
        char *s = NULL;
        int dev;

        if (streq(path, VHOSTMIG_ROOT_PATH))
                return strdup("manager");
        if (!decode_object(path, &vm, &dev))
                return strdup(path);
        if (dev < 0) {
                s = vm;
                vm = NULL;
                return s;
        }
        return asprintf(&s, "%s" VHOSTMIG_DEVICE_INFIX "%d", vm, dev) < 0 ? NULL : s;
}

enum kind {
        KIND_PLAIN,
        KIND_BYTES,
        KIND_FEATURES,
        KIND_PROTOCOL_FEATURES,
        KIND_TIMESTAMP, /* µs since the epoch, 0 = never (systemd's ...Timestamp) */
        KIND_CHECKSUM,  /* a 64-bit hash: hex, as every checksum is compared by eye */
        KIND_MS,        /* a duration named ...Ms: "45 ms" */
        KIND_PAGE_RATE, /* pages/s (DirtyRate) */
        KIND_BYTE_RATE, /* bytes/s (Bandwidth) */
};

/* "DowntimeMs", not "Items": the name ends in a word "Ms". */
static bool is_ms_name(const char *name) {
        size_t n = strlen(name);
        return n > 2 && has_suffix(name, "Ms") && name[n - 3] >= 'a' && name[n - 3] <= 'z';
}

static enum kind prop_kind(const char *name, const struct value *v) {
        if (!streq(v->type, "t"))
                return KIND_PLAIN;
        if (has_suffix(name, "Timestamp"))
                return KIND_TIMESTAMP;
        if (streq(name, "MemorySize") || streq(name, "LogSize"))
                return KIND_BYTES;
        if (streq(name, "Features") || streq(name, "AckedFeatures"))
                return KIND_FEATURES;
        if (streq(name, "ProtocolFeatures") || streq(name, "AckedProtocolFeatures"))
                return KIND_PROTOCOL_FEATURES;
        if (has_suffix(name, "Checksum"))
                return KIND_CHECKSUM;
        if (is_ms_name(name))
                return KIND_MS;
        if (streq(name, "DirtyRate"))
                return KIND_PAGE_RATE;
        if (streq(name, "Bandwidth"))
                return KIND_BYTE_RATE;
        return KIND_PLAIN;
}

void format_bytes(char *buf, size_t len, uint64_t bytes) {
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

/* "2024-05-01 12:00:00 CEST", local time; "never" for 0. */
static void format_timestamp(char *buf, size_t len, uint64_t usec) {
        time_t sec = (time_t) (usec / 1000000u);
        struct tm tm;

        if (usec == 0 || !localtime_r(&sec, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S %Z", &tm) == 0)
                snprintf(buf, len, "%s", usec == 0 ? "never" : "(invalid time)");
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
void fput_value(FILE *f, const char *name, const struct value *v, bool quoted) {
        enum kind kind = prop_kind(name, v);
        char buf[64];

        if (streq(v->type, "b"))
                fputs(v->num ? "yes" : "no", f);
        else if (kind == KIND_TIMESTAMP && !quoted) {
                format_timestamp(buf, sizeof(buf), v->num);
                fputs(buf, f);
        } else if (kind == KIND_BYTES && v->num >= 1024) {
                format_bytes(buf, sizeof(buf), v->num);
                fprintf(f, "%" PRIu64 " (%s)", v->num, buf);
        } else if (kind == KIND_FEATURES || kind == KIND_PROTOCOL_FEATURES) {
                fprintf(f, "0x%" PRIx64, v->num);
                if (quoted && v->num) {
                        char names[2048];
                        vhu_format_features(names, sizeof(names), v->num, kind == KIND_PROTOCOL_FEATURES, " ");
                        fprintf(f, " (%s)", names);
                }
        } else if (kind == KIND_CHECKSUM)
                fprintf(f, "0x%016" PRIx64, v->num);
        else if (kind == KIND_MS)
                fprintf(f, "%" PRIu64 " ms", v->num);
        else if (kind == KIND_PAGE_RATE)
                fprintf(f, "%" PRIu64 " pages/s", v->num);
        else if (kind == KIND_BYTE_RATE && v->num >= 1024)
                fprintf(f, "%" PRIu64 " B/s (%.1f MiB/s)", v->num, (double) v->num / 1048576.0);
        else if (kind == KIND_BYTE_RATE)
                fprintf(f, "%" PRIu64 " B/s", v->num);
        else if (strlen(v->type) == 1 && strchr("yqut", v->type[0]))
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

json_object *value_json(const char *name, const struct value *v) {
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
json_object *value_names_json(const char *name, const struct value *v) {
        enum kind kind = prop_kind(name, v);
        if (kind != KIND_FEATURES && kind != KIND_PROTOCOL_FEATURES)
                return NULL;
        return feature_names_json(v->num, kind == KIND_PROTOCOL_FEATURES);
}

/* Adds every property as "snake_case": value; a feature mask also as "..._feature_names". */
int props_to_json(const struct props *p, json_object *o, const char *skip) {
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

void print_json(json_object *o) {
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
}

json_object *feature_names_json(uint64_t bits, bool protocol) {
        json_object *arr = json_object_new_array();
        for (unsigned bit = 0; bit < 64; bit++) {
                if (!(bits & VHU_BIT(bit)))
                        continue;
                char buf[32];
                vhu_format_features(buf, sizeof(buf), VHU_BIT(bit), protocol, "");
                json_object_array_add(arr, json_object_new_string(buf));
        }
        return arr;
}

json_object *hex_json(uint64_t v) {
        char buf[24];
        snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
        return json_object_new_string(buf);
}

/* ---- text: labels and wrapping ---------------------------------------------------- */

/*
 * Where splitting the CamelCase name does not read well.  A timestamp is
 * "<its words> at" unless named here.
 */
static const struct {
        const char *name, *label;
} label_overrides[] = {
        { "Vms", "VMs" },
        { "Mac", "MAC address" },
        { "Mtu", "MTU" },
        { "CreatedTimestamp", "Created" },
        { "StateChangeTimestamp", "State changed" },
        { "QueuePairs", "Queue pairs" },
        { "TotalMs", "Total time" },
        { "SetupMs", "Setup time" },
};

char *prop_label(const char *name) {
        for (size_t i = 0; i < sizeof(label_overrides) / sizeof(label_overrides[0]); i++)
                if (streq(name, label_overrides[i].name))
                        return strdup(label_overrides[i].label);

        /*
         * "MemorySize" -> "Memory size"; "LastErrorTimestamp" -> "Last error
         * at"; "DowntimeMs" -> "Downtime" (the value says "ms").
         */
        size_t len = strlen(name);
        bool timestamp = has_suffix(name, "Timestamp") && len > strlen("Timestamp");
        if (timestamp)
                len -= strlen("Timestamp");
        else if (is_ms_name(name))
                len -= strlen("Ms");
        char *s = malloc(2 * len + sizeof(" at")), *p = s;
        if (!s)
                return NULL;
        for (size_t i = 0; i < len; i++) {
                char c = name[i];
                if (i > 0 && c >= 'A' && c <= 'Z') {
                        *p++ = ' ';
                        c = (char) (c - 'A' + 'a');
                }
                *p++ = c;
        }
        strcpy(p, timestamp ? " at" : "");
        return s;
}

#define LABEL_WIDTH       24
#define INDENT            (2 + LABEL_WIDTH + 1)
#define PROBE_LABEL_WIDTH 19

/* Words after a label column `indent` wide, wrapped at the terminal's width. */
static void print_wrapped(unsigned indent, const char *words) {
        unsigned width = cli_columns(), col = indent;
        const char *w = words;

        if (!*w) {
                puts("(none)");
                return;
        }
        while (*w) {
                size_t n = strcspn(w, " ");
                if (col > indent && col + 1 + n > width) {
                        printf("\n%*s", (int) indent, "");
                        col = indent;
                } else if (col > indent) {
                        putchar(' ');
                        col++;
                }
                printf("%.*s", (int) n, w);
                col += (unsigned) n;
                w += n;
                w += strspn(w, " ");
        }
        putchar('\n');
}

static void print_label(const char *name, bool first) {
        _cleanup_free_ char *label = first ? prop_label(name) : NULL;
        char text[80];
        snprintf(text, sizeof(text), "%s%s", label ? label : first ? name : "", first ? ":" : "");
        printf("  %-*s ", LABEL_WIDTH, text);
}

/* One property of `show`: feature masks with their names wrapped below, string arrays one per line. */
static void print_prop_text(const struct prop *p) {
        enum kind kind = prop_kind(p->name, &p->v);

        if (streq(p->v.type, "as") && strv_length(p->v.strv) > 0) {
                for (char **s = p->v.strv; *s; s++) {
                        print_label(p->name, s == p->v.strv);
                        puts(*s);
                }
                return;
        }
        print_label(p->name, true);
        fput_value(stdout, p->name, &p->v, false);
        putchar('\n');
        if (kind == KIND_FEATURES || kind == KIND_PROTOCOL_FEATURES) {
                char names[2048];
                vhu_format_features(names, sizeof(names), p->v.num, kind == KIND_PROTOCOL_FEATURES, " ");
                print_label(p->name, false);
                print_wrapped(INDENT, names);
        }
}

void print_props_text(const struct props *p, const char *skip) {
        for (size_t i = 0; i < p->n; i++)
                if (!skip || !streq(p->v[i].name, skip))
                        print_prop_text(&p->v[i]);
}

/* ---- probe ------------------------------------------------------------------------ */

static void print_probe_json(const char *socket, const struct vhm_probe_result *r) {
        _cleanup_(json_object_putp) json_object *o = json_object_new_object();
        json_object_object_add(o, "socket", json_object_new_string(socket));
        json_object_object_add(o, "features", hex_json(r->features));
        json_object_object_add(o, "feature_names", feature_names_json(r->features, false));
        json_object_object_add(o, "protocol_features", hex_json(r->protocol_features));
        json_object_object_add(o, "protocol_feature_names", feature_names_json(r->protocol_features, true));
        json_object_object_add(o, "protocol_features_negotiated", hex_json(r->protocol_features_negotiated));
        json_object_object_add(o, "queue_pairs", json_object_new_int64(r->queue_pairs));
        json_object_object_add(o, "max_mem_slots", json_object_new_int64((int64_t) r->max_mem_slots));
        json_object_object_add(o, "migratable", json_object_new_boolean(r->migratable));
        json_object *blockers = json_object_new_array();
        for (unsigned i = 0; i < r->blockers.n; i++)
                json_object_array_add(blockers, json_object_new_string(r->blockers.reason[i]));
        json_object_object_add(o, "blockers", blockers);
        print_json(o);
}

static void print_features_text(const char *label, uint64_t bits, bool protocol) {
        char names[1024];
        vhu_format_features(names, sizeof(names), bits, protocol, " ");
        printf("%-*s 0x%" PRIx64 "\n%-*s ", PROBE_LABEL_WIDTH, label, bits, PROBE_LABEL_WIDTH, "");
        print_wrapped(PROBE_LABEL_WIDTH + 1, names);
}

static void print_probe_text(const char *socket, const struct vhm_probe_result *r) {
        printf("%-*s %s\n", PROBE_LABEL_WIDTH, "Socket:", socket);
        print_features_text("Features:", r->features, false);
        print_features_text("Protocol features:", r->protocol_features, true);
        print_features_text("Negotiated:", r->protocol_features_negotiated, true);
        printf("%-*s %u\n", PROBE_LABEL_WIDTH, "Queue pairs:", r->queue_pairs);
        if (r->max_mem_slots)
                printf("%-*s %" PRIu64 "\n", PROBE_LABEL_WIDTH, "Memory slots:", r->max_mem_slots);
        else
                printf("%-*s 8 (SET_MEM_TABLE only)\n", PROBE_LABEL_WIDTH, "Memory slots:");
        printf("%-*s %s\n", PROBE_LABEL_WIDTH, "Migratable:", r->migratable ? "yes" : "no");
        for (unsigned i = 0; i < r->blockers.n; i++)
                printf("%-*s %s\n", PROBE_LABEL_WIDTH, i == 0 ? "Blocked by:" : "", r->blockers.reason[i]);
}

void print_probe(bool json, const char *socket, const struct vhm_probe_result *r) {
        if (json)
                print_probe_json(socket, r);
        else
                print_probe_text(socket, r);
}

char *prop_json_key(const char *name) {
        return snake_case(name);
}
