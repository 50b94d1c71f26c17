/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the migration hook needs of a libvirt domain XML: its name and UUID,
 * the vhost-user devices (interfaces, disks, virtiofs filesystems) with their
 * socket and who listens on it, and whether all guest memory is shared with
 * the back-ends.  Parsed with libxml2, never fetching anything (no network,
 * no DTD, entities left unexpanded).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Bounds on what the parser accepts; larger input is refused, not truncated. */
#define VHM_DX_MAX_INPUT   (8u << 20)
#define VHM_DX_MAX_DEVICES 1024u

enum vhm_dx_kind {
        VHM_DX_INTERFACE, /* <interface type='vhostuser'> */
        VHM_DX_DISK,      /* <disk type='vhostuser'> */
        VHM_DX_FS,        /* <filesystem> with <driver type='virtiofs'> */
};

/* Who listens on the device's socket when QEMU starts. */
enum vhm_dx_listener {
        VHM_DX_BACKEND_LISTENS, /* libvirt mode='client' (disks, fs with socket=): QEMU connects */
        VHM_DX_QEMU_LISTENS,    /* mode='server': the back-end connects once QEMU runs */
        VHM_DX_UNKNOWN,         /* no socket or no mode given (e.g. virtiofsd started by libvirt) */
};

struct vhm_dx_device {
        enum vhm_dx_kind kind;
        enum vhm_dx_listener listener;
        char *mac;    /* interfaces: <mac address=...>, or NULL */
        char *socket; /* the unix socket path, or NULL */
        char *target; /* disks: <target dev=...>; filesystems: <target dir=...>; or NULL */
};

struct vhm_domain_xml {
        char *name; /* <name>, or NULL */
        char *uuid; /* <uuid> in lower case, or NULL */
        struct vhm_dx_device *devices;
        unsigned ndevices;
        bool memory_shared;
        char memory_why[256]; /* when not shared: which part of memory is private, in words */
};

/*
 * Parses `len` bytes of domain XML.  0 with *out set (vhm_domain_xml_free()
 * it), or a negative errno with the reason in `error` (-EINVAL: not a domain
 * XML, with libxml2's message and line; -E2BIG: over a bound) and nothing
 * left allocated.
 */
int vhm_domain_xml_parse(const char *buf, size_t len, struct vhm_domain_xml **out, char *error, size_t error_len);

void vhm_domain_xml_free(struct vhm_domain_xml *dx);

/* "interface", "disk", "filesystem". */
const char *vhm_dx_kind_name(enum vhm_dx_kind kind);
