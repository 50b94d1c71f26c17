/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "daemon/common/cleanup.h"
#include "daemon/vhostmigd/props.h"

static const struct prop_def *find(const struct prop_iface *iface, const char *name) {
        for (unsigned i = 0; i < iface->n; i++)
                if (strcmp(iface->props[i].name, name) == 0)
                        return &iface->props[i];
        return NULL;
}

/*
 * The view of `object` (malloc'd: views hold arrays of strings) and the row
 * of `property`.  The object starts with its interface pointer.
 */
static int read_field(void *object, const char *property, void **view, const void **field) {
        const struct prop_iface *iface = *(const struct prop_iface **) object;
        const struct prop_def *def = find(iface, property);
        if (!def)
                return -ENOENT; /* a vtable row without a table row: a bug, said as such */
        *view = malloc(iface->view_size);
        if (!*view)
                return -ENOMEM;
        iface->read_view(object, *view);
        *field = (const char *) *view + def->offset;
        return 0;
}

#define GETTER_HEAD                                        \
        (void) bus;                                        \
        (void) path;                                       \
        (void) interface;                                  \
        (void) error;                                      \
        _cleanup_free_ void *view = NULL;                  \
        const void *f;                                     \
        int r = read_field(userdata, property, &view, &f); \
        if (r < 0)                                         \
        return r

int prop_get_S(PROP_GETTER_ARGS) {
        GETTER_HEAD;
        return sd_bus_message_append(reply, "s", (const char *) f);
}

int prop_get_B(PROP_GETTER_ARGS) {
        GETTER_HEAD;
        return sd_bus_message_append(reply, "b", (int) *(const bool *) f);
}

int prop_get_Q(PROP_GETTER_ARGS) {
        GETTER_HEAD;
        return sd_bus_message_append(reply, "q", *(const uint16_t *) f);
}

int prop_get_U(PROP_GETTER_ARGS) {
        GETTER_HEAD;
        return sd_bus_message_append(reply, "u", *(const uint32_t *) f);
}

int prop_get_T(PROP_GETTER_ARGS) {
        GETTER_HEAD;
        return sd_bus_message_append(reply, "t", *(const uint64_t *) f);
}

int prop_get_AU(PROP_GETTER_ARGS) {
        GETTER_HEAD;
        const struct prop_u32v *v = f;
        return sd_bus_message_append_array(reply, 'u', v->v, v->n * sizeof(uint32_t));
}

static int append_strings(sd_bus_message *reply, char type, const char *first, size_t stride, unsigned n) {
        char contents[2] = { type, '\0' };
        int r = sd_bus_message_open_container(reply, 'a', contents);
        for (unsigned i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append_basic(reply, type, first + i * stride);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

int prop_get_AS(PROP_GETTER_ARGS) {
        GETTER_HEAD;
        const struct prop_strv *v = f;
        return append_strings(reply, 's', v->v[0], sizeof(v->v[0]), v->n);
}

int prop_get_AO(PROP_GETTER_ARGS) {
        GETTER_HEAD;
        const struct prop_pathv *v = f;
        return append_strings(reply, 'o', v->v[0], sizeof(v->v[0]), v->n);
}

/* Strings compare as strings: bytes after the NUL are whatever an earlier, longer value left. */
static bool field_equal(const struct prop_def *def, const char *a, const char *b) {
        switch (def->type) {
        case PROP_S:
                return strncmp(a, b, def->size) == 0;
        case PROP_AS: {
                const struct prop_strv *x = (const void *) a, *y = (const void *) b;
                if (x->n != y->n)
                        return false;
                for (unsigned i = 0; i < x->n; i++)
                        if (strncmp(x->v[i], y->v[i], sizeof(x->v[i])) != 0)
                                return false;
                return true;
        }
        case PROP_AO: {
                const struct prop_pathv *x = (const void *) a, *y = (const void *) b;
                if (x->n != y->n)
                        return false;
                for (unsigned i = 0; i < x->n; i++)
                        if (strncmp(x->v[i], y->v[i], sizeof(x->v[i])) != 0)
                                return false;
                return true;
        }
        case PROP_AU: {
                const struct prop_u32v *x = (const void *) a, *y = (const void *) b;
                return x->n == y->n && memcmp(x->v, y->v, x->n * sizeof(x->v[0])) == 0;
        }
        default:
                return memcmp(a, b, def->size) == 0;
        }
}

unsigned props_diff(const struct prop_iface *iface, const void *was, const void *now, const char **changed) {
        unsigned n = 0;
        for (unsigned i = 0; i < iface->n; i++) {
                const struct prop_def *def = &iface->props[i];
                if (def->emits_change &&
                    !field_equal(def, (const char *) was + def->offset, (const char *) now + def->offset))
                        changed[n++] = def->name;
        }
        changed[n] = NULL;
        return n;
}

uint64_t props_now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}
