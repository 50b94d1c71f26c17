/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * For api-doc-check.py: makes one object of each interface on a running
 * vhostmigd (the bus from DBUS_SYSTEM_BUS_ADDRESS), which busctl cannot
 * because CreateVm carries fds: a VM "doc" on a sealed memfd, and a device
 * that stays configuring (QueuePairs 1, no queue given, so no back-end is
 * needed).  Prints the device's path.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "daemon/common/bus-api.h"
#include "daemon/common/cleanup.h"

#define MEM_SIZE (2u << 20)

static int sealed_memfd(void) {
        int fd = memfd_create("vhostmig-api-doc", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -errno;
        if (ftruncate(fd, MEM_SIZE) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

static int make_objects(sd_bus *bus, int memfd) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *vm = NULL, *dev = NULL;
        const char *vm_path, *dev_path;
        int r = sd_bus_call_method(bus, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "CreateVm",
                                   &e, &vm, "sa(httt)a{sv}", "doc", 1, memfd, (uint64_t) 0, (uint64_t) MEM_SIZE,
                                   (uint64_t) 0, 0);
        if (r >= 0)
                r = sd_bus_message_read(vm, "o", &vm_path);
        if (r >= 0)
                r = sd_bus_call_method(bus, VHOSTMIG_BUS_NAME, vm_path, VHOSTMIG_VM_INTERFACE, "AddDevice", &e, &dev,
                                       "sa(uttthh)a{sv}", "/nonexistent/api-doc.sock", 0, 1,
                                       VHOSTMIG_OPTION_QUEUE_PAIRS, "u", 1);
        if (r >= 0)
                r = sd_bus_message_read(dev, "o", &dev_path);
        if (r < 0) {
                fprintf(stderr, "api-objects: %s\n", e.message ? e.message : strerror(-r));
                return r;
        }
        printf("%s\n", dev_path);
        return 0;
}

int main(void) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_close_ int memfd = sealed_memfd();
        int r = memfd < 0 ? memfd : sd_bus_default_system(&bus);
        if (r >= 0)
                r = make_objects(bus, memfd);
        if (r < 0)
                fprintf(stderr, "api-objects: %s\n", strerror(-r));
        return r < 0 ? 1 : 0;
}
