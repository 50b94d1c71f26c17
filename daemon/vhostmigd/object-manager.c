/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * org.freedesktop.DBus.ObjectManager.GetManagedObjects, answered from the
 * daemon's own lists.
 *
 * sd-bus keeps the interface (sd_bus_add_object_manager: Introspect lists
 * it, InterfacesAdded and InterfacesRemoved go out through it); only this
 * one method is answered here, by a callback on the root path that sd-bus
 * runs before its own handling.  sd-bus's answer enumerates its object
 * tree (a copy of every path into a set, a lookup per path prefix) and
 * runs every property through its vtable plumbing, one getter call each.
 * Here each object's view is read once and its table appended as it
 * stands: with 256 VMs of 4 devices (32 000 properties) the daemon's CPU
 * time per call fell by a third (docs/performance.md, Scale).  The reply is the one sd-bus
 * gave, object for object and interface for interface: tests/dbus compares
 * it with every object's GetAll and Introspect.
 */
#include <errno.h>
#include <string.h>

#include <systemd/sd-bus.h>

#include "daemon/vhostmigd/daemon.h"
#include "daemon/vhostmigd/props.h"

#define OBJECT_MANAGER_INTERFACE "org.freedesktop.DBus.ObjectManager"

/* What sd-bus lists for every object beside its own interfaces, each without properties. */
static const char *const standard_interfaces[] = {
        "org.freedesktop.DBus.Peer",
        "org.freedesktop.DBus.Introspectable",
        "org.freedesktop.DBus.Properties",
};

static int append_empty_interface(sd_bus_message *reply, const char *interface) {
        int r = sd_bus_message_open_container(reply, 'e', "sa{sv}");
        if (r >= 0)
                r = sd_bus_message_append_basic(reply, 's', interface);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

/* One {oa{sa{sv}}} entry; `object` starts with its struct prop_iface pointer. */
static int append_object(sd_bus_message *reply, const char *path, const void *object) {
        int r = sd_bus_message_open_container(reply, 'e', "oa{sa{sv}}");
        if (r >= 0)
                r = sd_bus_message_append_basic(reply, 'o', path);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{sa{sv}}");
        for (size_t i = 0; r >= 0 && i < sizeof(standard_interfaces) / sizeof(standard_interfaces[0]); i++)
                r = append_empty_interface(reply, standard_interfaces[i]);
        if (r >= 0)
                r = props_append_interface(reply, object);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

/* Every VM and device on the bus now (one with its vtable registered), in one message. */
static int append_objects(struct daemon *d, sd_bus_message *reply) {
        int r = sd_bus_message_open_container(reply, 'a', "{oa{sa{sv}}}");
        for (const struct vm_object *o = d->vms; r >= 0 && o; o = o->next) {
                if (!o->slot)
                        continue;
                r = append_object(reply, o->path, o);
                for (unsigned i = 0; r >= 0 && i < o->ndevices; i++)
                        if (o->devices[i]->slot)
                                r = append_object(reply, o->devices[i]->path, o->devices[i]);
        }
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

static int on_root_message(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        (void) error;
        /* Anything else, or a call with arguments (sd-bus refuses it), is sd-bus's to answer. */
        if (!sd_bus_message_is_method_call(m, OBJECT_MANAGER_INTERFACE, "GetManagedObjects") ||
            !sd_bus_message_has_signature(m, ""))
                return 0;
        sd_bus_message *reply = NULL;
        int r = sd_bus_message_new_method_return(m, &reply);
        if (r >= 0)
                r = append_objects(userdata, reply);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        sd_bus_message_unref(reply);
        /* A reply that could not be built: sd-bus answers the call with the error. */
        return r < 0 ? r : 1;
}

int object_manager_register(struct daemon *d) {
        int r = sd_bus_add_object_manager(d->bus, NULL, VHOSTMIG_ROOT_PATH);
        return r < 0 ? r : sd_bus_add_object(d->bus, NULL, VHOSTMIG_ROOT_PATH, on_root_message, d);
}
