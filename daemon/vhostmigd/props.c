/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-event.h>

#include "daemon/vhostmigd/props.h"

/*
 * The row of `name`.  GetAll asks for an interface's properties in the
 * vtable's order, which is the table's: the row after the
 * last one found is tried first, so that a whole object costs one compare
 * per property rather than a scan each.
 */
static const struct prop_def *find(const struct prop_iface *iface, const char *name) {
        static const struct prop_iface *last_iface;
        static unsigned next;
        if (iface == last_iface && next < iface->n && strcmp(iface->props[next].name, name) == 0)
                return &iface->props[next++];
        for (unsigned i = 0; i < iface->n; i++)
                if (strcmp(iface->props[i].name, name) == 0) {
                        last_iface = iface;
                        next = i + 1;
                        return &iface->props[i];
                }
        return NULL;
}

/*
 * The last view read, on the event loop (the only thread that runs getters).
 * A view is kilobytes (blockers, device paths): copied once per property,
 * GetAll would copy it some 30 times.  While GetAll is dispatched no loop
 * code runs that could change the object, so the view read for its first
 * property serves the others: one snapshot per call, which is also one
 * moment for all of them (GetManagedObjects, object-manager.c, reads each
 * object's view once itself).  The key is the object, the message and the loop's
 * iteration (sd-event dispatches one source, so at most one call, per
 * iteration): a later message at the same address never matches.
 */
static struct {
        const void *object;
        const sd_bus_message *message;
        uint64_t iteration;
        void *view;
        size_t size;
} cache;

/* Whether m reads properties only. */
static bool is_read_only(sd_bus_message *m) {
        return sd_bus_message_is_method_call(m, "org.freedesktop.DBus.Properties", "GetAll") > 0;
}

/* The view of `object` now, or the one read earlier in the same read-only call. */
static int view_of(sd_bus *bus, void *object, const struct prop_iface *iface, const void **view) {
        sd_bus_message *m = sd_bus_get_current_message(bus);
        sd_event *e = sd_bus_get_event(bus);
        uint64_t iteration = 0;
        if (!m || !e || sd_event_get_iteration(e, &iteration) < 0)
                m = NULL;
        /* The cache holds a message only while it is read-only: the same one needs no second look. */
        if (m && cache.message == m && cache.iteration == iteration) {
                if (cache.object == object) {
                        *view = cache.view;
                        return 0;
                }
        } else if (m && !is_read_only(m))
                m = NULL;
        if (cache.size < iface->view_size) {
                void *p = realloc(cache.view, iface->view_size);
                if (!p)
                        return -ENOMEM;
                cache.view = p;
                cache.size = iface->view_size;
        }
        iface->read_view(object, cache.view);
        cache.object = m ? object : NULL; /* outside those calls every read is fresh */
        cache.message = m;
        cache.iteration = iteration;
        *view = cache.view;
        return 0;
}

/* The field of `property` in the view of `object`, which starts with its interface pointer. */
static int read_field(sd_bus *bus, void *object, const char *property, const void **field) {
        const struct prop_iface *iface = *(const struct prop_iface **) object;
        const struct prop_def *def = find(iface, property);
        const void *view;
        if (!def)
                return -ENOENT; /* a vtable row without a table row: a bug, said as such */
        int r = view_of(bus, object, iface, &view);
        if (r < 0)
                return r;
        *field = (const char *) view + def->offset;
        return 0;
}

static int append_strings(sd_bus_message *reply, char type, const char *first, size_t stride, unsigned n) {
        char contents[2] = { type, '\0' };
        int r = sd_bus_message_open_container(reply, 'a', contents);
        for (unsigned i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append_basic(reply, type, first + i * stride);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

/*
 * A field as its D-Bus type.  Basic values go in with
 * sd_bus_message_append_basic(): sd_bus_message_append() parses a signature
 * for each, and GetManagedObjects of 1280 objects asks for some 32 000 of them.
 */
static int append_field(sd_bus_message *reply, enum prop_type type, const void *f) {
        switch (type) {
        case PROP_S:
                return sd_bus_message_append_basic(reply, 's', f);
        case PROP_B: {
                int b = *(const bool *) f; /* D-Bus booleans are 32 bits */
                return sd_bus_message_append_basic(reply, 'b', &b);
        }
        case PROP_Q:
                return sd_bus_message_append_basic(reply, 'q', f);
        case PROP_U:
                return sd_bus_message_append_basic(reply, 'u', f);
        case PROP_T:
                return sd_bus_message_append_basic(reply, 't', f);
        case PROP_AS: {
                const struct prop_strv *v = f;
                return append_strings(reply, 's', v->v[0], sizeof(v->v[0]), v->n);
        }
        case PROP_AU: {
                const struct prop_u32v *v = f;
                return sd_bus_message_append_array(reply, 'u', v->v, v->n * sizeof(uint32_t));
        }
        case PROP_AO: {
                const struct prop_pathv *v = f;
                return append_strings(reply, 'o', v->v[0], sizeof(v->v[0]), v->n);
        }
        }
        return -EINVAL;
}

#define GETTER(type)                                                    \
        int prop_get_##type(PROP_GETTER_ARGS) {                         \
                (void) path;                                            \
                (void) interface;                                       \
                (void) error;                                           \
                const void *f;                                          \
                int r = read_field(bus, userdata, property, &f);        \
                return r < 0 ? r : append_field(reply, PROP_##type, f); \
        }
GETTER(S)
GETTER(B)
GETTER(Q)
GETTER(U)
GETTER(T)
GETTER(AS)
GETTER(AU)
GETTER(AO)

static const char *const signature_of[] = {
        [PROP_S] = PROP_SIG_S, [PROP_B] = PROP_SIG_B,   [PROP_Q] = PROP_SIG_Q,   [PROP_U] = PROP_SIG_U,
        [PROP_T] = PROP_SIG_T, [PROP_AS] = PROP_SIG_AS, [PROP_AU] = PROP_SIG_AU, [PROP_AO] = PROP_SIG_AO,
};

/* One {sv} entry: the property's name and its value in a variant. */
static int append_property(sd_bus_message *reply, const struct prop_def *def, const void *view) {
        int r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append_basic(reply, 's', def->name);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'v', signature_of[def->type]);
        if (r >= 0)
                r = append_field(reply, def->type, (const char *) view + def->offset);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

int props_append_interface(sd_bus_message *reply, const void *object) {
        const struct prop_iface *iface = *(const struct prop_iface *const *) object;
        void *view = malloc(iface->view_size);
        if (!view)
                return -ENOMEM;
        /* One read for all of them: one moment, as GetAll shows it. */
        iface->read_view(object, view);
        int r = sd_bus_message_open_container(reply, 'e', "sa{sv}");
        if (r >= 0)
                r = sd_bus_message_append_basic(reply, 's', iface->interface);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{sv}");
        for (unsigned i = 0; r >= 0 && i < iface->n; i++)
                r = append_property(reply, &iface->props[i], view);
        free(view);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r < 0 ? r : sd_bus_message_close_container(reply);
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

void props_copy_except(void *dst, const void *src, size_t size, size_t offset, size_t hole) {
        memcpy(dst, src, offset);
        memcpy((char *) dst + offset + hole, (const char *) src + offset + hole, size - offset - hole);
}

void prop_strv_copy(struct prop_strv *dst, const struct prop_strv *src) {
        dst->n = src->n;
        memcpy(dst->v, src->v, src->n * sizeof(src->v[0]));
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
