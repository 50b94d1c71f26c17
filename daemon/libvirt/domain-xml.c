/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "daemon/libvirt/domain-xml.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "daemon/common/cleanup.h"

static void set_error(char *error, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_error(char *error, size_t len, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error, len, fmt, ap);
        va_end(ap);
}

const char *vhm_dx_kind_name(enum vhm_dx_kind kind) {
        switch (kind) {
        case VHM_DX_INTERFACE:
                return "interface";
        case VHM_DX_DISK:
                return "disk";
        case VHM_DX_FS:
                return "filesystem";
        }
        return "device";
}

/* ---- tree helpers: only elements without a namespace are libvirt's own ---------------- */

static bool is_element(const xmlNode *n, const char *name) {
        return n->type == XML_ELEMENT_NODE && !n->ns && xmlStrEqual(n->name, BAD_CAST name);
}

static xmlNode *child(const xmlNode *n, const char *name) {
        for (xmlNode *c = n ? n->children : NULL; c; c = c->next)
                if (is_element(c, name))
                        return c;
        return NULL;
}

/* An attribute's value as a malloc'd string: NULL when absent; -ENOMEM in *r when out of memory. */
static char *prop(const xmlNode *n, const char *name, int *r) {
        if (!n)
                return NULL;
        xmlChar *v = xmlGetNoNsProp(n, BAD_CAST name);
        if (!v)
                return NULL;
        char *s = strdup((const char *) v);
        xmlFree(v);
        if (!s)
                *r = -ENOMEM;
        return s;
}

static bool prop_is(const xmlNode *n, const char *name, const char *value) {
        if (!n)
                return false;
        xmlChar *v = xmlGetNoNsProp(n, BAD_CAST name);
        bool eq = v && xmlStrEqual(v, BAD_CAST value);
        xmlFree(v);
        return eq;
}

/* An element's text, trimmed, malloc'd; NULL when the element is absent. */
static char *text(const xmlNode *n, int *r) {
        if (!n)
                return NULL;
        xmlChar *v = xmlNodeGetContent(n);
        if (!v) {
                *r = -ENOMEM;
                return NULL;
        }
        const char *s = (const char *) v;
        while (isspace((unsigned char) *s))
                s++;
        size_t len = strlen(s);
        while (len > 0 && isspace((unsigned char) s[len - 1]))
                len--;
        char *out = strndup(s, len);
        xmlFree(v);
        if (!out)
                *r = -ENOMEM;
        return out;
}

/* ---- devices ---------------------------------------------------------------------------- */

static void device_clear(struct vhm_dx_device *d) {
        free(d->mac);
        free(d->socket);
        free(d->target);
}

static int add_device(struct vhm_domain_xml *dx, const struct vhm_dx_device *d, char *error, size_t error_len) {
        if (dx->ndevices >= VHM_DX_MAX_DEVICES) {
                set_error(error, error_len, "more than %u vhost-user devices", VHM_DX_MAX_DEVICES);
                return -E2BIG;
        }
        struct vhm_dx_device *n = realloc(dx->devices, (dx->ndevices + 1) * sizeof(*n));
        if (!n)
                return -ENOMEM;
        dx->devices = n;
        dx->devices[dx->ndevices++] = *d;
        return 0;
}

/* <interface type='vhostuser'><mac address=/><source type='unix' path= mode=/> */
static int parse_interface(const xmlNode *n, struct vhm_dx_device *d) {
        int r = 0;
        const xmlNode *src = child(n, "source");
        d->kind = VHM_DX_INTERFACE;
        d->mac = prop(child(n, "mac"), "address", &r);
        d->socket = prop(src, "path", &r);
        if (prop_is(src, "mode", "client"))
                d->listener = VHM_DX_BACKEND_LISTENS;
        else if (prop_is(src, "mode", "server"))
                d->listener = VHM_DX_QEMU_LISTENS;
        else
                d->listener = VHM_DX_UNKNOWN;
        return r;
}

/* <disk type='vhostuser'><source type='unix' path=/><target dev=/>: QEMU is always the client. */
static int parse_disk(const xmlNode *n, struct vhm_dx_device *d) {
        int r = 0;
        d->kind = VHM_DX_DISK;
        d->socket = prop(child(n, "source"), "path", &r);
        d->target = prop(child(n, "target"), "dev", &r);
        d->listener = d->socket ? VHM_DX_BACKEND_LISTENS : VHM_DX_UNKNOWN;
        return r;
}

/*
 * <filesystem><driver type='virtiofs'/><source socket=/><target dir=/>: with
 * socket= an externally started virtiofsd listens; without it libvirt starts
 * virtiofsd itself when QEMU starts, so there is nothing to ask yet.
 */
static int parse_filesystem(const xmlNode *n, struct vhm_dx_device *d) {
        int r = 0;
        d->kind = VHM_DX_FS;
        d->socket = prop(child(n, "source"), "socket", &r);
        d->target = prop(child(n, "target"), "dir", &r);
        d->listener = d->socket ? VHM_DX_BACKEND_LISTENS : VHM_DX_UNKNOWN;
        return r;
}

static int parse_devices(const xmlNode *devices, struct vhm_domain_xml *dx, char *error, size_t error_len) {
        for (const xmlNode *c = devices ? devices->children : NULL; c; c = c->next) {
                struct vhm_dx_device d = { 0 };
                int r;
                if (is_element(c, "interface") && prop_is(c, "type", "vhostuser"))
                        r = parse_interface(c, &d);
                else if (is_element(c, "disk") && prop_is(c, "type", "vhostuser"))
                        r = parse_disk(c, &d);
                else if (is_element(c, "filesystem") && prop_is(child(c, "driver"), "type", "virtiofs"))
                        r = parse_filesystem(c, &d);
                else
                        continue;
                if (r >= 0)
                        r = add_device(dx, &d, error, error_len);
                if (r < 0) {
                        device_clear(&d);
                        return r;
                }
        }
        return 0;
}

/* ---- memory ----------------------------------------------------------------------------- */

/*
 * libvirt's rules: memory is shared with the back-ends when its access mode
 * is shared.  Domain-wide, <memoryBacking><access mode='shared'/> makes it so
 * (libvirt then backs RAM with a file, or hugetlbfs with <hugepages/>), and a
 * memfd source is shared unless <access mode='private'/> says otherwise.  A
 * NUMA cell's memAccess (and a memory device's access) overrides the
 * domain-wide mode for that part of memory; without an attribute it
 * inherits it.
 */
static void check_memory(const xmlNode *domain, struct vhm_domain_xml *dx) {
        const xmlNode *backing = child(domain, "memoryBacking");
        const xmlNode *access = child(backing, "access");
        bool memfd = prop_is(child(backing, "source"), "type", "memfd");
        bool wide = prop_is(access, "mode", "shared") || (memfd && !prop_is(access, "mode", "private"));
        const char *wide_why =
                prop_is(access, "mode", "private")
                        ? "<memoryBacking> has <access mode='private'/>"
                        : "<memoryBacking> has neither <source type='memfd'/> nor <access mode='shared'/>";
        dx->memory_shared = true;
        unsigned ncells = 0;
        for (const xmlNode *c = child(child(child(domain, "cpu"), "numa"), "cell"); c; c = c->next) {
                if (!is_element(c, "cell"))
                        continue;
                ncells++;
                if (prop_is(c, "memAccess", "shared") || (wide && !prop_is(c, "memAccess", "private")))
                        continue;
                int r = 0;
                _cleanup_free_ char *id = prop(c, "id", &r);
                snprintf(dx->memory_why, sizeof(dx->memory_why), "NUMA cell %s: %s", id ? id : "?",
                         prop_is(c, "memAccess", "private") ? "memAccess='private'" : wide_why);
                dx->memory_shared = false;
                return;
        }
        if (ncells == 0 && !wide) {
                snprintf(dx->memory_why, sizeof(dx->memory_why), "%s", wide_why);
                dx->memory_shared = false;
                return;
        }
        for (const xmlNode *m = child(child(domain, "devices"), "memory"); m; m = m->next) {
                if (!is_element(m, "memory") || prop_is(m, "access", "shared") ||
                    (wide && !prop_is(m, "access", "private")))
                        continue;
                snprintf(dx->memory_why, sizeof(dx->memory_why), "memory device: %s",
                         prop_is(m, "access", "private") ? "access='private'" : wide_why);
                dx->memory_shared = false;
                return;
        }
}

/* ---- the document ----------------------------------------------------------------------- */

static int parse_domain(const xmlNode *root, struct vhm_domain_xml *dx, char *error, size_t error_len) {
        if (!root || !is_element(root, "domain")) {
                set_error(error, error_len, "the root element is <%s>, not <domain>",
                          root ? (const char *) root->name : "(none)");
                return -EINVAL;
        }
        int r = 0;
        dx->name = text(child(root, "name"), &r);
        dx->uuid = text(child(root, "uuid"), &r);
        if (r < 0)
                return r;
        for (char *p = dx->uuid; p && *p; p++)
                *p = (char) tolower((unsigned char) *p);
        check_memory(root, dx);
        return parse_devices(child(root, "devices"), dx, error, error_len);
}

/* libxml2 reports some errors (encoding conversion) on stderr whatever the parse options say. */
static void silent(void *ctx, const char *msg, ...) {
        (void) ctx;
        (void) msg;
}

static void libxml_error(xmlParserCtxt *ctxt, char *error, size_t error_len) {
        const xmlError *e = xmlCtxtGetLastError(ctxt);
        if (!e || !e->message) {
                set_error(error, error_len, "malformed XML");
                return;
        }
        size_t n = strcspn(e->message, "\n");
        set_error(error, error_len, "malformed XML, line %d: %.*s", e->line, (int) n, e->message);
}

int vhm_domain_xml_parse(const char *buf, size_t len, struct vhm_domain_xml **out, char *error, size_t error_len) {
        if (len > VHM_DX_MAX_INPUT) {
                set_error(error, error_len, "domain XML of %zu bytes, more than the %u accepted", len,
                          VHM_DX_MAX_INPUT);
                return -E2BIG;
        }
        xmlParserCtxt *ctxt = xmlNewParserCtxt();
        if (!ctxt)
                return -ENOMEM;
        /* The hook's stderr is what libvirt shows the operator: only our own lines go there. */
        xmlGenericErrorFunc old_handler = xmlGenericError;
        void *old_context = xmlGenericErrorContext;
        xmlSetGenericErrorFunc(NULL, silent);
        /* No network, no DTD, entities left as they are, libxml2's own limits (no XML_PARSE_HUGE). */
        xmlDoc *doc = xmlCtxtReadMemory(ctxt, buf, (int) len, "domain.xml", NULL,
                                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
        int r;
        struct vhm_domain_xml *dx = NULL;
        if (!doc) {
                libxml_error(ctxt, error, error_len);
                r = -EINVAL;
        } else if (doc->intSubset || doc->extSubset) {
                /* libvirt never writes one; a DTD is where entity tricks live. */
                set_error(error, error_len, "a <!DOCTYPE> has no place in a domain XML");
                r = -EINVAL;
        } else if (!(dx = calloc(1, sizeof(*dx)))) {
                r = -ENOMEM;
        } else {
                r = parse_domain(xmlDocGetRootElement(doc), dx, error, error_len);
        }
        xmlFreeDoc(doc);
        xmlFreeParserCtxt(ctxt);
        xmlSetGenericErrorFunc(old_context, old_handler);
        if (r == -ENOMEM)
                set_error(error, error_len, "out of memory parsing the domain XML");
        if (r < 0) {
                vhm_domain_xml_free(dx);
                return r;
        }
        *out = dx;
        return 0;
}

void vhm_domain_xml_free(struct vhm_domain_xml *dx) {
        if (!dx)
                return;
        for (unsigned i = 0; i < dx->ndevices; i++)
                device_clear(&dx->devices[i]);
        free(dx->devices);
        free(dx->name);
        free(dx->uuid);
        free(dx);
}
