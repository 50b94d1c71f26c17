/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * D-Bus properties from one table per interface.  An interface lists its
 * properties once, as an X-macro of (Name, TYPE, field, CONST or CHANGE),
 * where field is a member of the interface's "view" struct: what the worker
 * last put in the object's snapshot plus what the event loop keeps itself.
 * From that list PROPS_VTABLE() makes the sd-bus vtable entries and
 * PROPS_DEFS() the table the getters and the change diff read:
 *
 *   #define VM_PROPERTIES(X) X(MemorySize, T, w.memory_size, CHANGE) ...
 *   #define PROPS_VIEW struct vm_view
 *   static const struct prop_def vm_props[] = { VM_PROPERTIES(PROPS_DEF) };
 *   VM_PROPERTIES(PROPS_CHECK)
 *
 * There is one getter per D-Bus type; each finds its row by the property's
 * name, copies the view (under the snapshot lock) and appends the field at
 * the row's offset.  Within one GetAll or GetManagedObjects an object's view
 * is copied once and serves all its properties.  A new property is one row
 * and a field.
 *
 * Every object whose vtable comes from here starts with a pointer to its
 * struct prop_iface: the getters reach the interface through it.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

#include "migrate/blockers.h"
#include "migrate/device.h"
#include "migrate/logging.h"

/* The C types behind the D-Bus ones. */
struct prop_strv { /* as */
        unsigned n;
        char v[VHM_BLOCKERS_MAX][VHM_BLOCKER_LEN];
};

struct prop_u32v { /* au */
        unsigned n;
        uint32_t v[VHM_DEVICE_MAX_QUEUES];
};

#define PROP_PATH_MAX 256
struct prop_pathv { /* ao */
        unsigned n;
        char v[VHM_LOGGING_MAX_DEVICES][PROP_PATH_MAX];
};

enum prop_type {
        PROP_S,
        PROP_B,
        PROP_Q,
        PROP_U,
        PROP_T,
        PROP_AS,
        PROP_AU,
        PROP_AO
};

struct prop_def {
        const char *name;
        enum prop_type type;
        size_t offset, size; /* of the field in the view */
        bool emits_change;   /* else const */
};

struct prop_iface {
        const char *interface;
        const struct prop_def *props;
        unsigned n;
        size_t view_size;
        /* Copies what the object shows now (the snapshot under its lock, and the loop's own fields). */
        void (*read_view)(const void *object, void *view);
};

/* Per type: the D-Bus signature, the getter, and the C type a field must have. */
#define PROP_SIG_S    "s"
#define PROP_SIG_B    "b"
#define PROP_SIG_Q    "q"
#define PROP_SIG_U    "u"
#define PROP_SIG_T    "t"
#define PROP_SIG_AS   "as"
#define PROP_SIG_AU   "au"
#define PROP_SIG_AO   "ao"
#define PROP_CTYPE_B  bool
#define PROP_CTYPE_Q  uint16_t
#define PROP_CTYPE_U  uint32_t
#define PROP_CTYPE_T  uint64_t
#define PROP_CTYPE_AS struct prop_strv
#define PROP_CTYPE_AU struct prop_u32v
#define PROP_CTYPE_AO struct prop_pathv
#define PROP_CTYPE_S  char
#define PROP_FIELD_TYPE_OK(type, view, field) \
        __builtin_types_compatible_p(__typeof__(PROP_FIELD_ELEMENT_##type(((view *) 0)->field)), PROP_CTYPE_##type)
#define PROP_FIELD_ELEMENT_S(f)  (f)[0] /* a char array */
#define PROP_FIELD_ELEMENT_B(f)  (f)
#define PROP_FIELD_ELEMENT_Q(f)  (f)
#define PROP_FIELD_ELEMENT_U(f)  (f)
#define PROP_FIELD_ELEMENT_T(f)  (f)
#define PROP_FIELD_ELEMENT_AS(f) (f)
#define PROP_FIELD_ELEMENT_AU(f) (f)
#define PROP_FIELD_ELEMENT_AO(f) (f)
#define PROP_FLAGS_CONST         SD_BUS_VTABLE_PROPERTY_CONST
#define PROP_FLAGS_CHANGE        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE

/* The getters, one per type. */
#define PROP_GETTER_ARGS                                                                                   \
        sd_bus *bus, const char *path, const char *interface, const char *property, sd_bus_message *reply, \
                void *userdata, sd_bus_error *error
int prop_get_S(PROP_GETTER_ARGS);
int prop_get_B(PROP_GETTER_ARGS);
int prop_get_Q(PROP_GETTER_ARGS);
int prop_get_U(PROP_GETTER_ARGS);
int prop_get_T(PROP_GETTER_ARGS);
int prop_get_AS(PROP_GETTER_ARGS);
int prop_get_AU(PROP_GETTER_ARGS);
int prop_get_AO(PROP_GETTER_ARGS);

/* An X-macro row as a vtable entry. */
#define PROPS_VTABLE(name, type, field, flags) \
        SD_BUS_PROPERTY(#name, PROP_SIG_##type, prop_get_##type, 0, PROP_FLAGS_##flags),

/* An X-macro row as a struct prop_def (define PROPS_VIEW to the view's type first). */
#define PROPS_DEF(name, type, field, flags)                                                   \
        { #name, PROP_##type, offsetof(PROPS_VIEW, field), sizeof(((PROPS_VIEW *) 0)->field), \
          PROP_FLAGS_##flags == PROP_FLAGS_CHANGE },

/* An X-macro row as a check, at file scope, that the field's C type is the D-Bus type's. */
#define PROPS_CHECK(name, type, field, flags)                       \
        _Static_assert(PROP_FIELD_TYPE_OK(type, PROPS_VIEW, field), \
                       #name ": the field's C type is not its D-Bus type's");

/*
 * Reading a view copies what is used of its arrays, not their capacity (a
 * VM's blockers and device paths are 12 KiB, in use mostly a few hundred
 * bytes): the struct at `src` (`size` bytes) into `dst` but for the member
 * at `offset` (`hole` bytes), which the caller copies with the functions
 * below.  Bytes past an array's n are left as they were.
 */
void props_copy_except(void *dst, const void *src, size_t size, size_t offset, size_t hole);
#define PROPS_COPY_EXCEPT(dst, src, member) \
        props_copy_except(dst, src, sizeof(*(src)), offsetof(__typeof__(*(src)), member), sizeof((src)->member))
void prop_strv_copy(struct prop_strv *dst, const struct prop_strv *src);

/*
 * The names of the CHANGE properties whose values differ between two views,
 * NULL-terminated into `changed` (room for iface->n + 1).  Returns how many.
 */
unsigned props_diff(const struct prop_iface *iface, const void *was, const void *now, const char **changed);

/*
 * The object's interface and all its properties, as one {sa{sv}} entry of
 * a GetManagedObjects reply or an InterfacesAdded signal: the view read once.
 */
int props_append_interface(sd_bus_message *reply, const void *object);

/* Microseconds since the epoch (CLOCK_REALTIME), as the API's ...Timestamp properties count. */
uint64_t props_now_usec(void);
