/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The migration stream: the table of record facts, framing over a
 * non-blocking fd with deadlines and a cancel fd, the order a receiver
 * accepts, and the typed records.  Memory stays bounded: a header is
 * checked against the table before its payload is read, and the payload
 * buffer never grows beyond the largest record in the table.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrate/stream.h"
#include "migrate/tls.h"
#include "migrate/vm.h"
#include "proto/vhost-user-transport.h"
#include "proto/vhost-user.h"

#define PAGES_MAX_LEN  (4u + 8u * VHM_REC_MAX_PAGES_PER_BATCH + VHM_REC_PAGE_SIZE * VHM_REC_MAX_PAGES_PER_BATCH)
#define HELLO_BASE_LEN 88u
#define DEVICE_BASE    36u
#define RING_LEN       36u
/* An optional record of a type this end does not know is skipped, up to this size. */
#define MAX_OPTIONAL_UNKNOWN (1u << 20)
#define MAX_IOV              300u
/* TLS: the guest pages staged at a time, through one guarded copy (one batch). */
/* What the landed hook gets at a time: well within this CPU's L2, so it reads what just landed from cache. */
#define LANDED_PIECE ((size_t) 256u << 10)
/* TLS: what the source copies out of guest memory at a time, to encrypt while it is in cache. */
#define TLS_CHUNK ((size_t) 64u << 10)

/* The table below is aligned by hand, a row a record. */
/* clang-format off */
#define REC(t, lo, hi, mand, from) \
        [VHM_REC_##t] = { VHM_REC_##t, #t, (lo), (hi), (mand), VHM_REC_FROM_##from }

static const struct vhm_rec_info record_table[VHM_REC_TYPE_MAX] = {
        /*  type           min length                    max length                    mandatory sender */
        REC(HELLO,         HELLO_BASE_LEN + 16u,         VHM_REC_HELLO_MAX_LEN,        true,  SOURCE),
        REC(AUTH,          VHM_REC_TOKEN_LEN,            VHM_REC_TOKEN_LEN,            true,  SOURCE),
        REC(PAGES,         4u + 8u,                      PAGES_MAX_LEN,                false, SOURCE),
        REC(DEVICE,        DEVICE_BASE + 2u * RING_LEN,  VHM_REC_DEVICE_MAX_LEN,       false, SOURCE),
        REC(BACKEND_STATE, 4u,                           4u + VHM_REC_MAX_BLOB_CHUNK,  false, SOURCE),
        REC(END,           VHM_REC_END_LEN,              VHM_REC_END_LEN,              true,  SOURCE),
        REC(COMMITTED,     0u,                           0u,                           true,  DESTINATION),
        REC(ABORTED,       0u,                           VHM_REC_MAX_REASON,           false, DESTINATION),
};
/* clang-format on */

const struct vhm_rec_info *vhm_rec_info(uint16_t type) {
        if (type == 0 || type >= VHM_REC_TYPE_MAX)
                return NULL;
        return &record_table[type];
}

const char *vhm_rec_name(uint16_t type) {
        const struct vhm_rec_info *info = vhm_rec_info(type);
        return info ? info->name : "unknown";
}

/* ---- little-endian fields ---- */

static void put16(uint8_t **p, uint16_t v) {
        v = htole16(v);
        memcpy(*p, &v, 2);
        *p += 2;
}

static void put32(uint8_t **p, uint32_t v) {
        v = htole32(v);
        memcpy(*p, &v, 4);
        *p += 4;
}

static void put64(uint8_t **p, uint64_t v) {
        v = htole64(v);
        memcpy(*p, &v, 8);
        *p += 8;
}

static uint16_t get16(const uint8_t **p) {
        uint16_t v;
        memcpy(&v, *p, 2);
        *p += 2;
        return le16toh(v);
}

static uint32_t get32(const uint8_t **p) {
        uint32_t v;
        memcpy(&v, *p, 4);
        *p += 4;
        return le32toh(v);
}

static uint64_t get64(const uint8_t **p) {
        uint64_t v;
        memcpy(&v, *p, 8);
        *p += 8;
        return le64toh(v);
}

static int efail(char *err, size_t errlen, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int efail(char *err, size_t errlen, int r, const char *fmt, ...) {
        if (err && errlen) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return r;
}

/* ---- HELLO ---- */

static bool valid_name_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
               c == '.';
}

/* 1..63 characters of [A-Za-z0-9_.-], then NULs to the end of the field. */
static bool valid_wire_name(const char name[VHM_REC_NAME_LEN]) {
        size_t len = strnlen(name, VHM_REC_NAME_LEN);
        if (len == 0 || len == VHM_REC_NAME_LEN)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!valid_name_char(name[i]))
                        return false;
        for (size_t i = len; i < VHM_REC_NAME_LEN; i++)
                if (name[i])
                        return false;
        return true;
}

static int check_regions(const struct vhm_rec_hello *h, char *err, size_t errlen) {
        if (h->nregions < 1 || h->nregions > VHM_REC_MAX_REGIONS)
                return efail(err, errlen, -EBADMSG, "HELLO: %u regions (1..%u)", h->nregions, VHM_REC_MAX_REGIONS);
        for (uint32_t i = 0; i < h->nregions; i++) {
                const struct vhm_rec_region *r = &h->regions[i];
                if (r->size == 0 || (r->gpa | r->size) % VHM_REC_PAGE_SIZE)
                        return efail(err, errlen, -EBADMSG,
                                     "HELLO: region %u (gpa 0x%" PRIx64 ", size 0x%" PRIx64
                                     ") is empty or not page aligned",
                                     i, r->gpa, r->size);
                if (r->gpa + r->size < r->gpa)
                        return efail(err, errlen, -EBADMSG, "HELLO: region %u wraps the address space", i);
                if (i > 0 && r->gpa < h->regions[i - 1].gpa + h->regions[i - 1].size)
                        return efail(err, errlen, -EBADMSG,
                                     "HELLO: region %u (gpa 0x%" PRIx64 ") is out of order or overlaps region %u", i,
                                     r->gpa, i - 1);
        }
        return 0;
}

int vhm_rec_check_hello(const struct vhm_rec_hello *h, char *err, size_t errlen) {
        if (h->version != VHM_REC_VERSION)
                return efail(err, errlen, -EPROTONOSUPPORT, "HELLO: version %u, this end speaks %u", h->version,
                             VHM_REC_VERSION);
        if (h->role != VHM_REC_ROLE_SOURCE)
                return efail(err, errlen, -EBADMSG, "HELLO: role %u is not the source's (%u)", h->role,
                             VHM_REC_ROLE_SOURCE);
        if (h->page_size != VHM_REC_PAGE_SIZE)
                return efail(err, errlen, -EBADMSG, "HELLO: page size %u, expected %u", h->page_size,
                             VHM_REC_PAGE_SIZE);
        if (!valid_wire_name(h->vm_name))
                return efail(err, errlen, -EBADMSG, "HELLO: the VM name is not 1..63 characters of [A-Za-z0-9_.-]");
        return check_regions(h, err, errlen);
}

int vhm_rec_encode_hello(const struct vhm_rec_hello *h, void *buf, size_t cap) {
        if (vhm_rec_check_hello(h, NULL, 0) < 0)
                return -EINVAL;
        size_t len = HELLO_BASE_LEN + 16u * h->nregions;
        if (cap < len)
                return -ENOBUFS;
        uint8_t *p = buf;
        memcpy(p, VHM_REC_MAGIC, 8);
        p += 8;
        put32(&p, h->version);
        put32(&p, h->role);
        put32(&p, h->page_size);
        memcpy(p, h->vm_name, VHM_REC_NAME_LEN);
        p += VHM_REC_NAME_LEN;
        put32(&p, h->nregions);
        for (uint32_t i = 0; i < h->nregions; i++) {
                put64(&p, h->regions[i].gpa);
                put64(&p, h->regions[i].size);
        }
        return (int) len;
}

int vhm_rec_decode_hello(const void *payload, uint32_t len, struct vhm_rec_hello *out, char *err, size_t errlen) {
        if (len < HELLO_BASE_LEN)
                return efail(err, errlen, -EBADMSG, "HELLO: %u bytes, shorter than its fixed part", len);
        const uint8_t *p = payload;
        if (memcmp(p, VHM_REC_MAGIC, 8) != 0)
                return efail(err, errlen, -EBADMSG, "HELLO: bad magic (not a vhostmig migration stream)");
        p += 8;
        memset(out, 0, sizeof(*out));
        out->version = get32(&p);
        out->role = get32(&p);
        out->page_size = get32(&p);
        memcpy(out->vm_name, p, VHM_REC_NAME_LEN);
        p += VHM_REC_NAME_LEN;
        out->nregions = get32(&p);
        if (out->nregions < 1 || out->nregions > VHM_REC_MAX_REGIONS)
                return efail(err, errlen, -EBADMSG, "HELLO: %u regions (1..%u)", out->nregions, VHM_REC_MAX_REGIONS);
        if (len != HELLO_BASE_LEN + 16u * out->nregions)
                return efail(err, errlen, -EBADMSG, "HELLO: %u bytes for %u regions, expected %u", len, out->nregions,
                             HELLO_BASE_LEN + 16u * out->nregions);
        for (uint32_t i = 0; i < out->nregions; i++) {
                out->regions[i].gpa = get64(&p);
                out->regions[i].size = get64(&p);
        }
        return vhm_rec_check_hello(out, err, errlen);
}

static int region_cmp(const void *a, const void *b) {
        const struct vhm_rec_region *x = a, *y = b;
        return x->gpa < y->gpa ? -1 : x->gpa > y->gpa;
}

int vhm_rec_hello_from_vm(const struct vhm_vm *vm, struct vhm_rec_hello *out) {
        memset(out, 0, sizeof(*out));
        out->version = VHM_REC_VERSION;
        out->role = VHM_REC_ROLE_SOURCE;
        out->page_size = VHM_REC_PAGE_SIZE;
        snprintf(out->vm_name, sizeof(out->vm_name), "%s", vhm_vm_name(vm));
        unsigned n = vhm_vm_region_count(vm);
        if (n < 1 || n > VHM_REC_MAX_REGIONS)
                return -EINVAL;
        out->nregions = n;
        for (unsigned i = 0; i < n; i++) {
                const struct vhm_region *r = vhm_vm_region(vm, i);
                out->regions[i] = (struct vhm_rec_region){ r->guest_phys_addr, r->size };
        }
        qsort(out->regions, n, sizeof(out->regions[0]), region_cmp);
        return 0;
}

int vhm_rec_hello_matches_vm(const struct vhm_rec_hello *h, const struct vhm_vm *vm, char *err, size_t errlen) {
        struct vhm_rec_hello mine;
        if (vhm_rec_hello_from_vm(vm, &mine) < 0)
                return efail(err, errlen, -EINVAL, "HELLO: this VM has %u memory regions", vhm_vm_region_count(vm));
        if (h->nregions != mine.nregions)
                return efail(err, errlen, -EINVAL,
                             "HELLO: layout mismatch: the source has %u memory regions, this VM %u", h->nregions,
                             mine.nregions);
        for (uint32_t i = 0; i < h->nregions; i++) {
                const struct vhm_rec_region *a = &h->regions[i], *b = &mine.regions[i];
                if (a->gpa != b->gpa || a->size != b->size)
                        return efail(err, errlen, -EINVAL,
                                     "HELLO: layout mismatch: region %u is 0x%" PRIx64 "+0x%" PRIx64
                                     " on the source, 0x%" PRIx64 "+0x%" PRIx64 " here",
                                     i, a->gpa, a->size, b->gpa, b->size);
        }
        return 0;
}

/* ---- AUTH, END, ABORTED ---- */

int vhm_rec_decode_auth(const void *payload, uint32_t len, char token[VHM_REC_TOKEN_LEN + 1], char *err,
                        size_t errlen) {
        if (len != VHM_REC_TOKEN_LEN)
                return efail(err, errlen, -EBADMSG, "AUTH: %u bytes, expected %u", len, VHM_REC_TOKEN_LEN);
        const char *p = payload;
        for (uint32_t i = 0; i < len; i++)
                if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
                        return efail(err, errlen, -EBADMSG, "AUTH: the token is not %u lowercase hex characters",
                                     VHM_REC_TOKEN_LEN);
        memcpy(token, p, len);
        token[len] = '\0';
        return 0;
}

int vhm_rec_encode_end(const struct vhm_rec_end *e, void *buf, size_t cap) {
        if (e->zero_pages > e->pages)
                return -EINVAL;
        if (cap < VHM_REC_END_LEN)
                return -ENOBUFS;
        uint8_t *p = buf;
        put64(&p, e->pages);
        put64(&p, e->zero_pages);
        put64(&p, e->checksum);
        put64(&p, e->downtime_usec);
        return VHM_REC_END_LEN;
}

int vhm_rec_decode_end(const void *payload, uint32_t len, struct vhm_rec_end *out, char *err, size_t errlen) {
        if (len != VHM_REC_END_LEN)
                return efail(err, errlen, -EBADMSG, "END: %u bytes, expected %u", len, VHM_REC_END_LEN);
        const uint8_t *p = payload;
        out->pages = get64(&p);
        out->zero_pages = get64(&p);
        out->checksum = get64(&p);
        out->downtime_usec = get64(&p);
        if (out->zero_pages > out->pages)
                return efail(err, errlen, -EBADMSG, "END: %" PRIu64 " zero pages of %" PRIu64 " pages sent",
                             out->zero_pages, out->pages);
        return 0;
}

int vhm_rec_decode_aborted(const void *payload, uint32_t len, char reason[VHM_REC_MAX_REASON + 1], char *err,
                           size_t errlen) {
        if (len > VHM_REC_MAX_REASON)
                return efail(err, errlen, -EBADMSG, "ABORTED: a reason of %u bytes (at most %u)", len,
                             VHM_REC_MAX_REASON);
        const char *p = payload;
        /* The peer's words end up in logs and on the bus: printable ASCII only. */
        for (uint32_t i = 0; i < len; i++)
                reason[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? p[i] : '?';
        reason[len] = '\0';
        return 0;
}

/* ---- DEVICE ---- */

static int check_ring(const struct vhm_rec_device *d, uint32_t i, char *err, size_t errlen) {
        const struct vhm_rec_ring *r = &d->rings[i];
        /* A ring the guest never set up (a queue pair it does not use) travels as all zero. */
        if (r->size == 0 && !r->enabled && !r->desc && !r->avail && !r->used && !r->last_avail)
                return 0;
        if (r->size == 0 || r->size > VHM_REC_MAX_RING_SIZE || (r->size & (r->size - 1)))
                return efail(err, errlen, -EBADMSG, "DEVICE %u: ring %u size %u is not a power of 2 up to %u", d->index,
                             i, r->size, VHM_REC_MAX_RING_SIZE);
        if (r->enabled > 1)
                return efail(err, errlen, -EBADMSG, "DEVICE %u: ring %u enabled is %u (0 or 1)", d->index, i,
                             r->enabled);
        if (r->desc % 16 || r->avail % 2 || r->used % 4)
                return efail(err, errlen, -EBADMSG, "DEVICE %u: ring %u addresses are misaligned", d->index, i);
        if (r->last_avail > UINT16_MAX)
                return efail(err, errlen, -EBADMSG, "DEVICE %u: ring %u index 0x%x does not fit 16 bits", d->index, i,
                             r->last_avail);
        bool packed = d->features & VHU_BIT(VHU_VF_RING_PACKED);
        if (packed && (r->last_avail & 0x7fffu) >= r->size)
                return efail(err, errlen, -EBADMSG, "DEVICE %u: packed ring %u index %u beyond its size %u", d->index,
                             i, r->last_avail & 0x7fffu, r->size);
        return 0;
}

int vhm_rec_check_device(const struct vhm_rec_device *d, char *err, size_t errlen) {
        if (d->queue_pairs < 1 || d->queue_pairs > VHM_REC_MAX_QUEUE_PAIRS)
                return efail(err, errlen, -EBADMSG, "DEVICE %u: %u queue pairs (1..%u)", d->index, d->queue_pairs,
                             VHM_REC_MAX_QUEUE_PAIRS);
        if (d->nrings != 2 * d->queue_pairs)
                return efail(err, errlen, -EBADMSG, "DEVICE %u: %u rings for %u queue pairs", d->index, d->nrings,
                             d->queue_pairs);
        if (d->mtu != 0 && d->mtu < 68)
                return efail(err, errlen, -EBADMSG, "DEVICE %u: MTU %u (0 or 68..65535)", d->index, d->mtu);
        for (uint32_t i = 0; i < d->nrings; i++) {
                int r = check_ring(d, i, err, errlen);
                if (r < 0)
                        return r;
        }
        return 0;
}

int vhm_rec_encode_device(const struct vhm_rec_device *d, void *buf, size_t cap) {
        if (vhm_rec_check_device(d, NULL, 0) < 0)
                return -EINVAL;
        size_t len = DEVICE_BASE + RING_LEN * d->nrings;
        if (cap < len)
                return -ENOBUFS;
        uint8_t *p = buf;
        put32(&p, d->index);
        put64(&p, d->features);
        put64(&p, d->protocol_features);
        put32(&p, d->queue_pairs);
        memcpy(p, d->mac, 6);
        p += 6;
        put16(&p, d->mtu);
        put32(&p, d->nrings);
        for (uint32_t i = 0; i < d->nrings; i++) {
                const struct vhm_rec_ring *r = &d->rings[i];
                put32(&p, r->size);
                put64(&p, r->desc);
                put64(&p, r->avail);
                put64(&p, r->used);
                put32(&p, r->enabled);
                put32(&p, r->last_avail);
        }
        return (int) len;
}

int vhm_rec_decode_device(const void *payload, uint32_t len, struct vhm_rec_device *out, char *err, size_t errlen) {
        if (len < DEVICE_BASE)
                return efail(err, errlen, -EBADMSG, "DEVICE: %u bytes, shorter than its fixed part", len);
        const uint8_t *p = payload;
        memset(out, 0, sizeof(*out));
        out->index = get32(&p);
        out->features = get64(&p);
        out->protocol_features = get64(&p);
        out->queue_pairs = get32(&p);
        memcpy(out->mac, p, 6);
        p += 6;
        out->mtu = get16(&p);
        out->nrings = get32(&p);
        if (out->nrings > VHM_REC_MAX_RINGS)
                return efail(err, errlen, -EBADMSG, "DEVICE %u: %u rings (at most %u)", out->index, out->nrings,
                             VHM_REC_MAX_RINGS);
        if (len != DEVICE_BASE + RING_LEN * out->nrings)
                return efail(err, errlen, -EBADMSG, "DEVICE %u: %u bytes for %u rings, expected %u", out->index, len,
                             out->nrings, DEVICE_BASE + RING_LEN * out->nrings);
        for (uint32_t i = 0; i < out->nrings; i++) {
                struct vhm_rec_ring *r = &out->rings[i];
                r->size = get32(&p);
                r->desc = get64(&p);
                r->avail = get64(&p);
                r->used = get64(&p);
                r->enabled = get32(&p);
                r->last_avail = get32(&p);
        }
        return vhm_rec_check_device(out, err, errlen);
}

/* ---- PAGES ---- */

bool vhm_page_is_zero(const void *page) {
        const uint8_t *p = page;
        /* Equal to itself shifted by one byte and starting with 0: all zero. */
        return p[0] == 0 && memcmp(p, p + 1, VHM_REC_PAGE_SIZE - 1) == 0;
}

static bool page_in_layout(const struct vhm_rec_hello *layout, uint64_t gpa) {
        for (uint32_t i = 0; i < layout->nregions; i++) {
                const struct vhm_rec_region *r = &layout->regions[i];
                if (gpa >= r->gpa && r->size >= VHM_REC_PAGE_SIZE && gpa - r->gpa <= r->size - VHM_REC_PAGE_SIZE)
                        return true;
        }
        return false;
}

/* The entries of pg (count set): flags, every gpa in the layout, the record's length exact; counts the zero pages. */
static int check_page_list(struct vhm_rec_pages *pg, uint32_t len, const struct vhm_rec_hello *layout, char *err,
                           size_t errlen) {
        const uint8_t *p = pg->entries;
        pg->zero = 0;
        for (uint32_t i = 0; i < pg->count; i++) {
                uint64_t e = get64(&p);
                uint64_t flags = e & VHM_REC_PAGE_FLAGS_MASK, gpa = e & ~(uint64_t) VHM_REC_PAGE_FLAGS_MASK;
                if (flags & ~(uint64_t) VHM_REC_PAGE_ZERO)
                        return efail(err, errlen, -EBADMSG,
                                     "PAGES: page %u (gpa 0x%" PRIx64 ") has unknown flags 0x%" PRIx64, i, gpa, flags);
                if (!page_in_layout(layout, gpa))
                        return efail(err, errlen, -EBADMSG,
                                     "PAGES: page %u at gpa 0x%" PRIx64 " is outside the memory layout", i, gpa);
                pg->zero += (flags & VHM_REC_PAGE_ZERO) != 0;
        }
        uint64_t expected = 4u + 8u * (uint64_t) pg->count + (uint64_t) VHM_REC_PAGE_SIZE * (pg->count - pg->zero);
        if (len != expected)
                return efail(err, errlen, -EBADMSG, "PAGES: %u bytes for %u pages (%u zero), expected %" PRIu64, len,
                             pg->count, pg->zero, expected);
        return 0;
}

int vhm_rec_decode_pages(const void *payload, uint32_t len, const struct vhm_rec_hello *layout,
                         struct vhm_rec_pages *out, char *err, size_t errlen) {
        if (len < 4)
                return efail(err, errlen, -EBADMSG, "PAGES: %u bytes, no count", len);
        const uint8_t *p = payload;
        uint32_t count = get32(&p);
        if (count < 1 || count > VHM_REC_MAX_PAGES_PER_BATCH)
                return efail(err, errlen, -EBADMSG, "PAGES: count %u (1..%u)", count, VHM_REC_MAX_PAGES_PER_BATCH);
        if (len < 4u + 8u * count)
                return efail(err, errlen, -EBADMSG, "PAGES: %u bytes, too short for %u entries", len, count);
        memset(out, 0, sizeof(*out));
        out->count = count;
        out->entries = p;
        int r = check_page_list(out, len, layout, err, errlen);
        if (r < 0)
                return r;
        out->data = p + 8u * count;
        return 0;
}

void vhm_rec_pages_get(const struct vhm_rec_pages *pg, uint32_t i, uint64_t *gpa, const void **data) {
        const uint8_t *p = pg->entries;
        size_t nonzero_before = 0;
        /* Callers walk the batch in order; this stays O(n) per lookup for random access, which nobody does. */
        for (uint32_t k = 0; k < i; k++) {
                const uint8_t *q = p + 8u * k;
                nonzero_before += !(get64(&q) & VHM_REC_PAGE_ZERO);
        }
        const uint8_t *q = p + 8u * i;
        uint64_t e = get64(&q);
        *gpa = e & ~(uint64_t) VHM_REC_PAGE_FLAGS_MASK;
        *data = (e & VHM_REC_PAGE_ZERO) ? NULL : pg->data + nonzero_before * VHM_REC_PAGE_SIZE;
}

/* Zero pages as zeros; consecutive data pages at consecutive gpas in one guarded write. */
int vhm_rec_pages_write(const struct vhm_rec_pages *pg, struct vhm_vm *vm, char *err, size_t errlen) {
        static const uint8_t zero_page[VHM_REC_PAGE_SIZE];
        const uint8_t *e = pg->entries, *data = pg->data;
        for (uint32_t i = 0; i < pg->count;) {
                uint64_t v = get64(&e);
                uint64_t gpa = v & ~(uint64_t) VHM_REC_PAGE_FLAGS_MASK;
                const void *src = zero_page;
                size_t len = VHM_REC_PAGE_SIZE;
                i++;
                if (!(v & VHM_REC_PAGE_ZERO)) {
                        src = data;
                        /* The run goes on while the next entry is the next page, with data. */
                        while (i < pg->count) {
                                const uint8_t *q = e;
                                if (get64(&q) != gpa + len)
                                        break;
                                e = q;
                                len += VHM_REC_PAGE_SIZE;
                                i++;
                        }
                        data += len;
                }
                int r = vhm_vm_write(vm, gpa, src, len);
                if (r < 0)
                        return efail(err, errlen, r, "PAGES: page at gpa 0x%" PRIx64 ": %s", gpa, vhm_vm_error(vm));
        }
        return 0;
}

/* ---- BACKEND_STATE ---- */

int vhm_rec_decode_backend_state(const void *payload, uint32_t len, uint32_t *index, const void **chunk,
                                 uint32_t *chunk_len, char *err, size_t errlen) {
        if (len < 4 || len > 4u + VHM_REC_MAX_BLOB_CHUNK)
                return efail(err, errlen, -EBADMSG, "BACKEND_STATE: %u bytes (4..%u)", len,
                             4u + VHM_REC_MAX_BLOB_CHUNK);
        const uint8_t *p = payload;
        *index = get32(&p);
        *chunk = p;
        *chunk_len = len - 4;
        return 0;
}

void vhm_rec_blob_init(struct vhm_rec_blob *b) {
        memset(b, 0, sizeof(*b));
}

void vhm_rec_blob_free(struct vhm_rec_blob *b) {
        free(b->data);
        vhm_rec_blob_init(b);
}

static int blob_reserve(struct vhm_rec_blob *b, size_t need) {
        if (need <= b->cap)
                return 0;
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < need)
                cap *= 2;
        if (cap > VHM_REC_MAX_BLOB)
                cap = VHM_REC_MAX_BLOB;
        uint8_t *d = realloc(b->data, cap);
        if (!d)
                return -ENOMEM;
        b->data = d;
        b->cap = cap;
        return 0;
}

int vhm_rec_blob_append(struct vhm_rec_blob *b, uint32_t index, const void *chunk, uint32_t len, char *err,
                        size_t errlen) {
        if (b->complete)
                return efail(err, errlen, -EBADMSG, "BACKEND_STATE %u: the blob of device %u is already complete",
                             index, b->index);
        if (b->started && index != b->index)
                return efail(err, errlen, -EBADMSG, "BACKEND_STATE %u: arrived in the middle of device %u's blob",
                             index, b->index);
        b->started = true;
        b->index = index;
        if (len == 0) {
                b->complete = true;
                return 0;
        }
        if (len > VHM_REC_MAX_BLOB - b->len)
                return efail(err, errlen, -EFBIG, "BACKEND_STATE %u: the blob exceeds %u bytes", index,
                             VHM_REC_MAX_BLOB);
        if (blob_reserve(b, b->len + len) < 0)
                return efail(err, errlen, -ENOMEM, "BACKEND_STATE %u: out of memory", index);
        memcpy(b->data + b->len, chunk, len);
        b->len += len;
        return 0;
}

/* ---- the checksum ---- */

#define CK_PRIME UINT64_C(0x9e3779b97f4a7c15) /* odd: a multiplication by it is a bijection */
#define CK_WORDS (VHM_REC_PAGE_SIZE / 8u)
#define CK_LANES 8u /* accumulators: two AVX2 vectors, four SSE2 ones */

static uint64_t ck_mix(uint64_t h, uint64_t v) {
        h = (h ^ v) * CK_PRIME;
        return h ^ (h >> 29);
}

/*
 * The page hash (stream version 3): word i of the page, x, becomes
 *
 *     y = x ^ (i + 1) * CK_PRIME          a key per position: words swapped differ
 *     y.hi += lo32(y.lo * y.lo)           Feistel round: the low half into the high
 *     y.lo ^= hi32(y.hi * y.hi)           and the new high half back into the low
 *
 * and is added into lane i % 8; the eight lanes are folded by ck_mix.  Both
 * rounds use only 32x32->64 multiplies, which SSE2 and AVX2 do four lanes at
 * a time (pmuludq), where the previous 64-bit multiply chains ran on the one
 * scalar multiplier.  Each round is a bijection of the word (a Feistel round
 * is, whatever its function), a lane is a sum, and ck_mix is a bijection of
 * each lane given the others: a page that differs in one word always hashes
 * differently.  Several words changed are caught by the squares'
 * nonlinearity (not a guarantee, as no 64-bit hash gives one).  The OR of
 * the words says whether the page is zero, in the same pass.
 */
static inline uint64_t ck_word(uint64_t x, uint64_t key) {
        uint64_t y = x ^ key;
        y += ((uint64_t) (uint32_t) y * (uint32_t) y) << 32;
        y ^= ((y >> 32) * (y >> 32)) >> 32;
        return y;
}

static uint64_t ck_finish(const uint64_t acc[CK_LANES], uint64_t any, bool *zero) {
        uint64_t h = 0;
        for (unsigned j = 0; j < CK_LANES; j++)
                h = ck_mix(h, acc[j]);
        if (zero)
                *zero = any == 0;
        return h;
}

/* The definition, word by word: any CPU, and the reference the vector versions are tested against. */
static uint64_t ck_page_scalar(const void *page, bool *zero) {
        const uint8_t *p = page;
        uint64_t acc[CK_LANES] = { 0 }, any = 0;
        for (unsigned i = 0; i < CK_WORDS; i++) {
                uint64_t x;
                memcpy(&x, p + 8u * i, 8);
                x = le64toh(x);
                acc[i % CK_LANES] += ck_word(x, (i + 1) * CK_PRIME);
                any |= x;
        }
        return ck_finish(acc, any, zero);
}

#if defined(__x86_64__) && __BYTE_ORDER == __LITTLE_ENDIAN
#include <immintrin.h>

#define CK_KEY_STEP (CK_LANES * CK_PRIME) /* the key of a lane's next word */

static inline __m128i ck_step128(__m128i acc, __m128i x, __m128i key) {
        __m128i y = _mm_xor_si128(x, key);
        y = _mm_add_epi64(y, _mm_slli_epi64(_mm_mul_epu32(y, y), 32));
        __m128i hi = _mm_srli_epi64(y, 32);
        y = _mm_xor_si128(y, _mm_srli_epi64(_mm_mul_epu32(hi, hi), 32));
        return _mm_add_epi64(acc, y);
}

/* SSE2, which every x86-64 has: lanes 2j and 2j+1 in vector j. */
static uint64_t ck_page_sse2(const void *page, bool *zero) {
        const uint8_t *p = page;
        __m128i acc[4], key[4], any = _mm_setzero_si128();
        const __m128i step = _mm_set1_epi64x((long long) CK_KEY_STEP);
        for (unsigned j = 0; j < 4; j++) {
                acc[j] = _mm_setzero_si128();
                key[j] = _mm_set_epi64x((long long) ((2 * j + 2) * CK_PRIME), (long long) ((2 * j + 1) * CK_PRIME));
        }
        for (unsigned i = 0; i < CK_WORDS; i += CK_LANES)
                for (unsigned j = 0; j < 4; j++) {
                        __m128i x = _mm_loadu_si128((const __m128i *) (p + 8u * i + 16u * j));
                        acc[j] = ck_step128(acc[j], x, key[j]);
                        any = _mm_or_si128(any, x);
                        key[j] = _mm_add_epi64(key[j], step);
                }
        uint64_t lanes[CK_LANES], o[2];
        for (unsigned j = 0; j < 4; j++)
                _mm_storeu_si128((__m128i *) (lanes + 2 * j), acc[j]);
        _mm_storeu_si128((__m128i *) o, any);
        return ck_finish(lanes, o[0] | o[1], zero);
}

static inline __attribute__((target("avx2"))) __m256i ck_step256(__m256i acc, __m256i x, __m256i key) {
        __m256i y = _mm256_xor_si256(x, key);
        y = _mm256_add_epi64(y, _mm256_slli_epi64(_mm256_mul_epu32(y, y), 32));
        __m256i hi = _mm256_srli_epi64(y, 32);
        y = _mm256_xor_si256(y, _mm256_srli_epi64(_mm256_mul_epu32(hi, hi), 32));
        return _mm256_add_epi64(acc, y);
}

/* AVX2: lanes 0-3 in one vector, 4-7 in the other. */
static __attribute__((target("avx2"))) uint64_t ck_page_avx2(const void *page, bool *zero) {
        const uint8_t *p = page;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, any = a0;
        __m256i k0 = _mm256_set_epi64x((long long) (4 * CK_PRIME), (long long) (3 * CK_PRIME),
                                       (long long) (2 * CK_PRIME), (long long) CK_PRIME);
        __m256i k1 = _mm256_add_epi64(k0, _mm256_set1_epi64x((long long) (4 * CK_PRIME)));
        const __m256i step = _mm256_set1_epi64x((long long) CK_KEY_STEP);
        for (unsigned i = 0; i < CK_WORDS; i += CK_LANES) {
                __m256i x0 = _mm256_loadu_si256((const __m256i *) (p + 8u * i));
                __m256i x1 = _mm256_loadu_si256((const __m256i *) (p + 8u * i + 32));
                a0 = ck_step256(a0, x0, k0);
                a1 = ck_step256(a1, x1, k1);
                any = _mm256_or_si256(any, _mm256_or_si256(x0, x1));
                k0 = _mm256_add_epi64(k0, step);
                k1 = _mm256_add_epi64(k1, step);
        }
        uint64_t lanes[CK_LANES];
        _mm256_storeu_si256((__m256i *) lanes, a0);
        _mm256_storeu_si256((__m256i *) (lanes + 4), a1);
        return ck_finish(lanes, _mm256_testz_si256(any, any) ? 0 : 1, zero);
}
#endif

uint64_t vhm_checksum_page_impl(const void *page, bool *zero, enum vhm_checksum_impl impl) {
#if defined(__x86_64__) && __BYTE_ORDER == __LITTLE_ENDIAN
        if (impl == VHM_CHECKSUM_AVX2 && __builtin_cpu_supports("avx2"))
                return ck_page_avx2(page, zero);
        if (impl != VHM_CHECKSUM_SCALAR)
                return ck_page_sse2(page, zero);
#endif
        (void) impl;
        return ck_page_scalar(page, zero);
}

uint64_t vhm_checksum_page(const void *page, bool *zero) {
        return vhm_checksum_page_impl(page, zero, VHM_CHECKSUM_AVX2);
}

uint64_t vhm_checksum_fold(uint64_t h, uint64_t page_hash) {
        return ck_mix(h, page_hash);
}

uint64_t vhm_checksum_update(uint64_t h, const void *buf, size_t len) {
        const uint8_t *p = buf;
        size_t off = 0;
        for (; off + VHM_REC_PAGE_SIZE <= len; off += VHM_REC_PAGE_SIZE)
                h = vhm_checksum_fold(h, vhm_checksum_page(p + off, NULL));
        /* A tail shorter than a page (no caller over guest memory has one): its words one by one. */
        for (; off + 8 <= len; off += 8) {
                uint64_t w;
                memcpy(&w, p + off, 8);
                h = ck_mix(h, le64toh(w));
        }
        return h;
}

int vhm_memory_checksum(struct vhm_vm *vm, uint64_t *out) {
        struct vhm_rec_hello layout;
        int r = vhm_rec_hello_from_vm(vm, &layout);
        if (r < 0)
                return r;
        enum {
                CHUNK = 1u << 16
        };
        uint8_t *buf = malloc(CHUNK);
        if (!buf)
                return -ENOMEM;
        uint64_t h = VHM_CHECKSUM_INIT;
        for (uint32_t i = 0; i < layout.nregions && r >= 0; i++) {
                const struct vhm_rec_region *reg = &layout.regions[i];
                for (uint64_t off = 0; off < reg->size && r >= 0; off += CHUNK) {
                        size_t n = reg->size - off < CHUNK ? (size_t) (reg->size - off) : CHUNK;
                        r = vhm_vm_read(vm, reg->gpa + off, buf, n);
                        if (r >= 0)
                                h = vhm_checksum_update(h, buf, n);
                }
        }
        free(buf);
        if (r < 0)
                return r;
        *out = h;
        return 0;
}

/*
 * The same checksum with the page hashes taken by several threads, each over
 * its own slice of pages, then folded in order on the caller's thread: the
 * source's pass over the whole memory sits inside the downtime.
 */
struct ck_slice {
        pthread_t thread;
        struct vhm_vm *vm;
        const struct vhm_rec_hello *layout;
        uint64_t first, end; /* page indices in the layout's order */
        uint64_t *hash;      /* the whole table; this slice writes [first, end) */
        int r;
};

/* The gpa of the layout's page k (k is below the layout's page count). */
static uint64_t ck_page_gpa(const struct vhm_rec_hello *layout, uint64_t k, uint64_t *left_in_region) {
        for (uint32_t i = 0;; i++) {
                uint64_t n = layout->regions[i].size / VHM_REC_PAGE_SIZE;
                if (k < n || i + 1 == layout->nregions) {
                        *left_in_region = n - k;
                        return layout->regions[i].gpa + k * VHM_REC_PAGE_SIZE;
                }
                k -= n;
        }
}

/* Under the guard (vhm_vm_visit): the hashes of a run of pages, in order. */
static void ck_hash_run(const void *p, size_t len, void *arg) {
        uint64_t *out = arg;
        for (size_t off = 0; off < len; off += VHM_REC_PAGE_SIZE)
                *out++ = vhm_checksum_page((const uint8_t *) p + off, NULL);
}

/* The slice's pages hashed in place, a region's part at a time: no copy out of guest memory. */
static void *ck_slice_run(void *arg) {
        struct ck_slice *c = arg;
        c->r = 0;
        for (uint64_t k = c->first; c->r == 0 && k < c->end;) {
                uint64_t left, gpa = ck_page_gpa(c->layout, k, &left);
                uint64_t n = c->end - k < left ? c->end - k : left;
                c->r = vhm_vm_visit(c->vm, gpa, n * VHM_REC_PAGE_SIZE, ck_hash_run, &c->hash[k]);
                k += n;
        }
        return NULL;
}

/* A pass over pages [0, pages) of the layout on up to `threads` threads of its own. */
struct vhm_checksum_job {
        struct vhm_rec_hello layout;
        struct ck_slice slice[VHM_CHECKSUM_MAX_THREADS];
        unsigned threads, started; /* started: a bit per slice whose thread runs */
        uint64_t pages;
        uint64_t *hash;
};

static uint64_t layout_pages(const struct vhm_rec_hello *layout) {
        uint64_t pages = 0;
        for (uint32_t i = 0; i < layout->nregions; i++)
                pages += layout->regions[i].size / VHM_REC_PAGE_SIZE;
        return pages;
}

/* The first `pages` pages (at most all) of the VM's layout, sliced, each slice on a thread (one that cannot start waits for the finish). */
static int job_start(struct vhm_vm *vm, unsigned threads, uint64_t pages, struct vhm_checksum_job **out) {
        struct vhm_checksum_job *j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        int r = vhm_rec_hello_from_vm(vm, &j->layout);
        uint64_t all = r < 0 ? 0 : layout_pages(&j->layout);
        j->pages = pages < all ? pages : all;
        j->hash = r < 0 ? NULL : malloc((j->pages ? j->pages : 1) * sizeof(*j->hash));
        if (r < 0 || !j->hash) {
                free(j);
                return r < 0 ? r : -ENOMEM;
        }
        threads = threads < 1 ? 1 : threads > VHM_CHECKSUM_MAX_THREADS ? VHM_CHECKSUM_MAX_THREADS : threads;
        j->threads = j->pages < threads ? (j->pages ? (unsigned) j->pages : 1u) : threads;
        for (unsigned t = 0; t < j->threads; t++) {
                j->slice[t] = (struct ck_slice){ .vm = vm,
                                                 .layout = &j->layout,
                                                 .first = j->pages * t / j->threads,
                                                 .end = j->pages * (t + 1) / j->threads,
                                                 .hash = j->hash };
                if (pthread_create(&j->slice[t].thread, NULL, ck_slice_run, &j->slice[t]) == 0)
                        j->started |= 1u << t;
        }
        *out = j;
        return 0;
}

/* Every slice done (those without a thread here), the first failure returned; the hashes stay in j->hash. */
static int job_wait(struct vhm_checksum_job *j) {
        int r = 0;
        for (unsigned t = 0; t < j->threads; t++) {
                if (j->started & (1u << t))
                        pthread_join(j->slice[t].thread, NULL);
                else
                        ck_slice_run(&j->slice[t]);
                if (j->slice[t].r < 0 && r == 0)
                        r = j->slice[t].r;
        }
        return r;
}

static void job_free(struct vhm_checksum_job *j) {
        free(j->hash);
        free(j);
}

int vhm_memory_checksum_start(struct vhm_vm *vm, unsigned threads, struct vhm_checksum_job **out) {
        return job_start(vm, threads, UINT64_MAX, out);
}

int vhm_memory_checksum_finish(struct vhm_checksum_job *j, uint64_t *out) {
        int r = job_wait(j);
        uint64_t h = VHM_CHECKSUM_INIT;
        for (uint64_t k = 0; r == 0 && k < j->pages; k++)
                h = vhm_checksum_fold(h, j->hash[k]);
        job_free(j);
        if (r == 0)
                *out = h;
        return r;
}

int vhm_memory_checksum_threads(struct vhm_vm *vm, unsigned threads, uint64_t *out) {
        struct vhm_checksum_job *j;
        if (threads <= 1 || job_start(vm, threads, UINT64_MAX, &j) < 0)
                return vhm_memory_checksum(vm, out);
        return vhm_memory_checksum_finish(j, out);
}

int vhm_memory_hash_sample(struct vhm_vm *vm, unsigned threads, uint64_t *pages) {
        struct vhm_checksum_job *j;
        int r = job_start(vm, threads, *pages, &j);
        if (r < 0)
                return r;
        r = job_wait(j);
        if (r == 0)
                *pages = j->pages;
        job_free(j);
        return r;
}

/* ---- the stream ---- */

enum recv_phase {
        PHASE_FIRST,  /* nothing received */
        PHASE_HELLO,  /* destination: HELLO received, AUTH next */
        PHASE_BODY,   /* destination: authenticated; device state: records */
        PHASE_CLOSED, /* after END, COMMITTED or ABORTED: nothing more */
};

struct vhm_stream {
        int fd;
        int cancel_fd;
        bool is_socket;
        struct vhm_tls *tls; /* NULL: plain */
        bool sent_source;    /* this end sent a source record: it is the source */
        enum vhm_stream_mode mode;
        enum recv_phase phase;
        unsigned timeout_ms;
        uint64_t deadline; /* absolute, over every call; UINT64_MAX: none */
        uint64_t sent, received;
        uint8_t *buf;
        size_t cap;
        vhm_stream_landed_fn landed; /* called as PAGES data lands in guest memory */
        void *landed_arg;
        uint8_t *bounce; /* TLS: TLS_CHUNK of guest pages copied out through the guard, then encrypted */
        char error[512];
};

static int sfail(struct vhm_stream *s, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int sfail(struct vhm_stream *s, int r, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->error, sizeof(s->error), fmt, ap);
        va_end(ap);
        return r;
}

int vhm_stream_new(int fd, unsigned timeout_ms, struct vhm_stream **out) {
        if (fd < 0)
                return -EBADF;
        struct vhm_stream *s = calloc(1, sizeof(*s));
        int flags = fcntl(fd, F_GETFL);
        if (!s || flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
                int r = !s ? -ENOMEM : -errno;
                free(s);
                close(fd);
                return r;
        }
        struct stat st;
        s->is_socket = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
        s->fd = fd;
        s->cancel_fd = -1;
        s->timeout_ms = timeout_ms;
        s->deadline = UINT64_MAX;
        *out = s;
        return 0;
}

void vhm_stream_free(struct vhm_stream *s) {
        if (!s)
                return;
        vhm_tls_free(s->tls);
        close(s->fd);
        free(s->buf);
        free(s->bounce);
        free(s);
}

int vhm_stream_fd(const struct vhm_stream *s) {
        return s->fd;
}

const char *vhm_stream_error(const struct vhm_stream *s) {
        return s->error;
}

uint64_t vhm_stream_bytes_sent(const struct vhm_stream *s) {
        return s->sent;
}

uint64_t vhm_stream_bytes_received(const struct vhm_stream *s) {
        return s->received;
}

void vhm_stream_set_cancel_fd(struct vhm_stream *s, int fd) {
        s->cancel_fd = fd;
}

void vhm_stream_set_deadline(struct vhm_stream *s, uint64_t deadline_usec) {
        s->deadline = deadline_usec ? deadline_usec : UINT64_MAX;
}

void vhm_stream_set_mode(struct vhm_stream *s, enum vhm_stream_mode mode) {
        s->mode = mode;
}

static uint64_t call_deadline(const struct vhm_stream *s) {
        uint64_t d = vhu_deadline_after_ms(s->timeout_ms);
        return d < s->deadline ? d : s->deadline;
}

static bool cancelled(const struct vhm_stream *s) {
        if (s->cancel_fd < 0)
                return false;
        struct pollfd p = { .fd = s->cancel_fd, .events = POLLIN };
        return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

/* Waits for the fd, the cancel fd or the deadline; `what` names the record for the error. */
static int wait_fd(struct vhm_stream *s, short events, uint64_t deadline, const char *what) {
        struct pollfd p[2] = { { .fd = s->fd, .events = events }, { .fd = s->cancel_fd, .events = POLLIN } };
        int r = vhu_poll_until(p, s->cancel_fd >= 0 ? 2 : 1, deadline);
        if (r == -ETIMEDOUT)
                return sfail(s, r, "%s: timed out %s the peer", what, events == POLLIN ? "waiting for" : "writing to");
        if (r < 0)
                return sfail(s, r, "%s: poll: %s", what, strerror(-r));
        if (s->cancel_fd >= 0 && (p[1].revents & POLLIN))
                return sfail(s, -ECANCELED, "%s: cancelled", what);
        return 0;
}

/*
 * The channel under the records: the fd itself, or a TLS session over it.
 * Each call moves what it can without waiting: -EAGAIN, and *events says
 * what to poll for.
 */
static ssize_t chan_write(struct vhm_stream *s, struct iovec *iov, unsigned n, short *events) {
        *events = POLLOUT;
        if (s->tls) {
                ssize_t w = vhm_tls_writev(s->tls, iov, n, s->error, sizeof(s->error));
                *events = vhm_tls_events(s->tls);
                return w;
        }
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = n };
        ssize_t w = s->is_socket ? sendmsg(s->fd, &mh, MSG_NOSIGNAL) : writev(s->fd, iov, (int) n);
        return w < 0 ? -errno : w;
}

static int chan_flush(struct vhm_stream *s, short *events) {
        if (!s->tls)
                return 0;
        int r = vhm_tls_flush(s->tls, s->error, sizeof(s->error));
        *events = vhm_tls_events(s->tls);
        return r;
}

static ssize_t chan_read(struct vhm_stream *s, void *buf, size_t len, short *events) {
        *events = POLLIN;
        if (s->tls) {
                ssize_t n = vhm_tls_read(s->tls, buf, len, s->error, sizeof(s->error));
                *events = vhm_tls_events(s->tls);
                return n;
        }
        ssize_t n = read(s->fd, buf, len);
        return n < 0 ? -errno : n;
}

/* An error of the channel: a TLS one already has its words in s->error, prefixed here by the record. */
static int chan_failed(struct vhm_stream *s, int r, const char *what, const char *dir) {
        if (s->tls) {
                char tls_err[sizeof(s->error)];
                snprintf(tls_err, sizeof(tls_err), "%s", s->error);
                return sfail(s, r, "%s: %s", what, tls_err);
        }
        return sfail(s, r, "%s: %s: %s", what, dir, strerror(-r));
}

static void advance_iov(struct iovec **iov, unsigned *n, size_t w) {
        while (w > 0) {
                size_t k = w < (*iov)->iov_len ? w : (*iov)->iov_len;
                (*iov)->iov_base = (uint8_t *) (*iov)->iov_base + k;
                (*iov)->iov_len -= k;
                w -= k;
                if ((*iov)->iov_len == 0)
                        (*iov)++, (*n)--;
        }
}

/* Every byte of iov taken by the channel; with `flush`, on the wire too (TLS holds some until then). */
static int write_iov(struct vhm_stream *s, struct iovec *iov, unsigned n, const char *what, bool flush) {
        uint64_t deadline = call_deadline(s);
        short events;
        for (;;) {
                while (n > 0 && iov->iov_len == 0)
                        iov++, n--;
                if (n == 0 && !flush)
                        return 0;
                ssize_t w = n > 0 ? chan_write(s, iov, n, &events) : chan_flush(s, &events);
                if (w == -EINTR)
                        continue;
                if (w == -EAGAIN) {
                        int r = wait_fd(s, events, deadline, what);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (w < 0)
                        return chan_failed(s, (int) w, what, "sending");
                if (n == 0)
                        return 0;
                s->sent += (uint64_t) w;
                advance_iov(&iov, &n, (size_t) w);
        }
}

static int write_all(struct vhm_stream *s, struct iovec *iov, unsigned n, const char *what) {
        return write_iov(s, iov, n, what, true);
}

static int read_exact(struct vhm_stream *s, void *buf, size_t len, uint64_t deadline, const char *what) {
        uint8_t *p = buf;
        short events;
        while (len > 0) {
                ssize_t n = chan_read(s, p, len, &events);
                if (n == -EINTR)
                        continue;
                if (n == -EAGAIN) {
                        int r = wait_fd(s, events, deadline, what);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (n < 0)
                        return chan_failed(s, (int) n, what, "receiving");
                if (n == 0)
                        return sfail(s, -ECONNRESET, "%s: the peer closed the stream", what);
                s->received += (uint64_t) n;
                p += n;
                len -= (size_t) n;
        }
        return 0;
}

/*
 * TLS where the stream crosses hosts: on a TCP socket the handshake runs
 * with the token as key, bounded like any call (the timeout, the deadline,
 * the cancel fd); on anything else (a Unix socket, checked by SO_PEERCRED at
 * accept; a pipe; a file) the stream stays plain.
 */
int vhm_stream_secure(struct vhm_stream *s, bool server, const char *token, const char *id) {
        if (s->tls)
                return sfail(s, -EALREADY, "TLS: the stream is already secured");
        if (s->sent || s->received)
                return sfail(s, -EINVAL, "TLS: records already went in clear");
        if (!vhm_tls_fd_is_tcp(s->fd))
                return 0;
        return vhm_tls_handshake(s->fd, server ? VHM_TLS_SERVER : VHM_TLS_CLIENT, token, id, call_deadline(s),
                                 s->cancel_fd, &s->tls, s->error, sizeof(s->error));
}

bool vhm_stream_is_tls(const struct vhm_stream *s) {
        return s->tls != NULL;
}

int vhm_stream_send_raw(struct vhm_stream *s, uint16_t type, uint16_t flags, const struct iovec *iov, unsigned n) {
        const char *name = vhm_rec_name(type);
        if (n > MAX_IOV)
                return sfail(s, -EINVAL, "%s: %u pieces to send (at most %u)", name, n, MAX_IOV);
        uint64_t total = 0;
        for (unsigned i = 0; i < n; i++)
                total += iov[i].iov_len;
        if (total > UINT32_MAX)
                return sfail(s, -EMSGSIZE, "%s: %" PRIu64 " bytes do not fit a record", name, total);
        if (cancelled(s))
                return sfail(s, -ECANCELED, "%s: cancelled", name);
        uint8_t hdr[VHM_REC_HDR_SIZE], *p = hdr;
        put16(&p, type);
        put16(&p, flags);
        put32(&p, (uint32_t) total);
        struct iovec v[MAX_IOV + 1];
        v[0] = (struct iovec){ hdr, sizeof(hdr) };
        if (n)
                memcpy(v + 1, iov, n * sizeof(*iov));
        return write_all(s, v, n + 1, name);
}

int vhm_stream_sendv(struct vhm_stream *s, uint16_t type, const struct iovec *iov, unsigned n) {
        const struct vhm_rec_info *info = vhm_rec_info(type);
        if (!info)
                return sfail(s, -EINVAL, "record type %u is unknown", type);
        uint64_t total = 0;
        for (unsigned i = 0; i < n; i++)
                total += iov[i].iov_len;
        if (total < info->min_len || total > info->max_len)
                return sfail(s, -EINVAL, "%s: %" PRIu64 " bytes (%u..%u)", info->name, total, info->min_len,
                             info->max_len);
        int r = vhm_stream_send_raw(s, type, 0, iov, n);
        if (r >= 0 && info->sender == VHM_REC_FROM_SOURCE)
                s->sent_source = true;
        return r;
}

int vhm_stream_send(struct vhm_stream *s, uint16_t type, const void *payload, uint32_t len) {
        struct iovec v = { (void *) payload, len };
        return vhm_stream_sendv(s, type, &v, len ? 1 : 0);
}

/* The order rules of vhm_stream_set_mode(); 0 when `type` may come now. */
static int check_order(struct vhm_stream *s, const struct vhm_rec_info *info) {
        const char *name = info->name;
        if (s->phase == PHASE_CLOSED)
                return sfail(s, -EBADMSG, "%s: received after the stream's last record", name);
        if (s->mode == VHM_STREAM_DEVICE_STATE) {
                if (info->type != VHM_REC_DEVICE && info->type != VHM_REC_BACKEND_STATE && info->type != VHM_REC_END)
                        return sfail(s, -EBADMSG, "%s: not part of a device state stream", name);
                return 0;
        }
        if (s->sent_source) {
                if (info->sender != VHM_REC_FROM_DESTINATION)
                        return sfail(s, -EBADMSG, "%s: a source's record sent to the source", name);
                return 0;
        }
        if (info->sender != VHM_REC_FROM_SOURCE)
                return sfail(s, -EBADMSG, "%s: a destination's record sent to the destination", name);
        if (s->phase == PHASE_FIRST && info->type != VHM_REC_HELLO)
                return sfail(s, -EBADMSG, "%s: received before HELLO", name);
        if (s->phase == PHASE_HELLO && info->type != VHM_REC_AUTH)
                return sfail(s, -EBADMSG, "%s: received before AUTH", name);
        if (s->phase == PHASE_BODY && (info->type == VHM_REC_HELLO || info->type == VHM_REC_AUTH))
                return sfail(s, -EBADMSG, "%s: received twice", name);
        return 0;
}

static void advance_phase(struct vhm_stream *s, uint16_t type) {
        switch (type) {
        case VHM_REC_HELLO:
                s->phase = PHASE_HELLO;
                break;
        case VHM_REC_AUTH:
                s->phase = PHASE_BODY;
                break;
        case VHM_REC_END:
        case VHM_REC_COMMITTED:
        case VHM_REC_ABORTED:
                s->phase = PHASE_CLOSED;
                break;
        default:
                if (s->phase == PHASE_FIRST)
                        s->phase = PHASE_BODY;
                break;
        }
}

/* Reads and drops an optional record of a type this end does not know. */
static int skip_payload(struct vhm_stream *s, uint32_t len, uint64_t deadline) {
        uint8_t scratch[4096];
        while (len > 0) {
                uint32_t k = len < sizeof(scratch) ? len : (uint32_t) sizeof(scratch);
                int r = read_exact(s, scratch, k, deadline, "optional record");
                if (r < 0)
                        return r;
                len -= k;
        }
        return 0;
}

/*
 * The next record's header, checked against the table and the order;
 * optional unknown records are skipped.  Returns the type, *info its facts.
 */
static int recv_header(struct vhm_stream *s, uint64_t deadline, const struct vhm_rec_info **info_out,
                       uint32_t *length_out) {
        for (;;) {
                if (cancelled(s))
                        return sfail(s, -ECANCELED, "receiving: cancelled");
                uint8_t hdr[VHM_REC_HDR_SIZE];
                int r = read_exact(s, hdr, sizeof(hdr), deadline, "record header");
                if (r < 0)
                        return r;
                const uint8_t *p = hdr;
                uint16_t type = get16(&p), flags = get16(&p);
                uint32_t length = get32(&p);
                const struct vhm_rec_info *info = vhm_rec_info(type);
                if (flags & ~VHM_REC_F_OPTIONAL)
                        return sfail(s, -EBADMSG, "%s (type %u): unknown flags 0x%x", vhm_rec_name(type), type, flags);
                if (!info && !(flags & VHM_REC_F_OPTIONAL))
                        return sfail(s, -EBADMSG, "record type %u is unknown and not optional", type);
                if (!info && length > MAX_OPTIONAL_UNKNOWN)
                        return sfail(s, -EMSGSIZE, "optional record type %u: %u bytes (at most %u)", type, length,
                                     MAX_OPTIONAL_UNKNOWN);
                if (!info) {
                        r = skip_payload(s, length, deadline);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (length < info->min_len || length > info->max_len)
                        return sfail(s, length > info->max_len ? -EMSGSIZE : -EBADMSG, "%s: %u bytes (%u..%u)",
                                     info->name, length, info->min_len, info->max_len);
                r = check_order(s, info);
                if (r < 0)
                        return r;
                *info_out = info;
                *length_out = length;
                return type;
        }
}

int vhm_stream_recv(struct vhm_stream *s, const void **payload, uint32_t *len) {
        return vhm_stream_recv_vm(s, NULL, NULL, payload, len, NULL);
}

/* Reads into iov[0..n) (advanced as it goes), like read_exact. */
static int read_exactv(struct vhm_stream *s, struct iovec *iov, unsigned n, uint64_t deadline, const char *what) {
        for (;;) {
                while (n > 0 && iov->iov_len == 0)
                        iov++, n--;
                if (n == 0)
                        return 0;
                ssize_t k = readv(s->fd, iov, (int) n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && errno == EAGAIN) {
                        int r = wait_fd(s, POLLIN, deadline, what);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (k < 0)
                        return sfail(s, -errno, "%s: receiving: %m", what);
                if (k == 0)
                        return sfail(s, -ECONNRESET, "%s: the peer closed the stream", what);
                s->received += (uint64_t) k;
                advance_iov(&iov, &n, (size_t) k);
        }
}

static int grow_buf(struct vhm_stream *s, size_t len, const char *what) {
        if (len <= s->cap)
                return 0;
        /* Grown to the record's length only: a table maximum, never the peer's word. */
        uint8_t *b = realloc(s->buf, len);
        if (!b)
                return sfail(s, -ENOMEM, "%s: no memory for %zu bytes", what, len);
        s->buf = b;
        s->cap = len;
        return 0;
}

/* [gpa, gpa + len) is in guest memory: the landed hook's turn, while those pages are in cache. */
static int landed(struct vhm_stream *s, uint64_t gpa, size_t len) {
        if (!s->landed || len == 0)
                return 0;
        int r = s->landed(gpa, len, s->landed_arg);
        return r < 0 ? sfail(s, r, "PAGES: at 0x%" PRIx64 ": the landed hook failed: %s", gpa, strerror(-r)) : 0;
}

void vhm_stream_set_landed_hook(struct vhm_stream *s, vhm_stream_landed_fn fn, void *arg) {
        s->landed = fn;
        s->landed_arg = arg;
}

/*
 * Over TLS a run's decrypted bytes go into guest memory from where GnuTLS
 * decrypted them (vhm_tls_peek), one guarded write each: no copy into a
 * buffer of ours first.
 */
static int recv_tls_run(struct vhm_stream *s, struct vhm_vm *vm, uint64_t gpa, size_t len, uint64_t deadline) {
        size_t told = 0; /* [0, told) went to the landed hook */
        for (size_t off = 0; off < len;) {
                const void *p;
                ssize_t k = vhm_tls_peek(s->tls, &p, s->error, sizeof(s->error));
                if (k == -EAGAIN) {
                        int r = wait_fd(s, vhm_tls_events(s->tls), deadline, "PAGES");
                        if (r < 0)
                                return r;
                        continue;
                }
                if (k < 0)
                        return chan_failed(s, (int) k, "PAGES", "receiving");
                if (k == 0)
                        return sfail(s, -ECONNRESET, "PAGES: the peer closed the stream");
                size_t n = (size_t) k < len - off ? (size_t) k : len - off;
                if (vhm_vm_write(vm, gpa + off, p, n) < 0)
                        return sfail(s, -EIO, "PAGES: %s", vhm_vm_error(vm));
                vhm_tls_consume(s->tls, n);
                s->received += n;
                off += n;
                /* Whole pages to the hook, LANDED_PIECE at a time, the rest at the run's end. */
                size_t whole = off == len ? len : off / VHM_REC_PAGE_SIZE * VHM_REC_PAGE_SIZE;
                while (whole - told >= LANDED_PIECE || (whole == len && told < len)) {
                        size_t piece = whole - told < LANDED_PIECE ? whole - told : LANDED_PIECE;
                        int r = landed(s, gpa + told, piece);
                        if (r < 0)
                                return r;
                        told += piece;
                }
        }
        return 0;
}

/*
 * A run of data pages, [gpa, gpa + len) in one region, from the stream into
 * guest memory: a plain stream lets the kernel copy into the mapping (a page
 * that is gone fails it with EFAULT, named as the guarded path names it);
 * over TLS the decrypted bytes go in through one guarded write.
 */
static int recv_run(struct vhm_stream *s, struct vhm_vm *vm, uint64_t gpa, size_t len, uint64_t deadline) {
        struct iovec v;
        int r = vhm_vm_kernel_iov(vm, gpa, len, &v);
        if (r < 0)
                return sfail(s, r, "PAGES: %s", vhm_vm_error(vm));
        if (s->tls)
                return recv_tls_run(s, vm, gpa, len, deadline);
        /* With a landed hook, LANDED_PIECE a read, each handed over while it is in cache. */
        size_t piece = s->landed ? LANDED_PIECE : len;
        for (size_t off = 0; off < len; off += piece) {
                struct iovec part = { (uint8_t *) v.iov_base + off, len - off < piece ? len - off : piece };
                r = read_exactv(s, &part, 1, deadline, "PAGES");
                if (r == -EFAULT)
                        return sfail(s, vhm_vm_kernel_io_failed(vm, gpa + off, part.iov_len, "PAGES: receiving"),
                                     "PAGES: %s", vhm_vm_error(vm));
                if (r == 0)
                        r = landed(s, gpa + off, len - off < piece ? len - off : piece);
                if (r < 0)
                        return r;
        }
        return 0;
}

/*
 * A PAGES record's data straight into guest memory, in the record's order
 * (a gpa listed twice ends as its last entry says): runs of consecutive
 * data pages in one read each, zero pages zeroed.
 */
static int recv_page_data(struct vhm_stream *s, struct vhm_vm *vm, const struct vhm_rec_pages *pg, uint64_t deadline) {
        static const uint8_t zero_page[VHM_REC_PAGE_SIZE];
        const uint8_t *e = pg->entries;
        for (uint32_t i = 0; i < pg->count;) {
                uint64_t v = get64(&e);
                uint64_t gpa = v & ~(uint64_t) VHM_REC_PAGE_FLAGS_MASK;
                size_t len = VHM_REC_PAGE_SIZE;
                i++;
                if (v & VHM_REC_PAGE_ZERO) {
                        if (vhm_vm_write(vm, gpa, zero_page, len) < 0)
                                return sfail(s, -EIO, "PAGES: %s", vhm_vm_error(vm));
                        int r = landed(s, gpa, len);
                        if (r < 0)
                                return r;
                        continue;
                }
                /* The run goes on while the next entry is the next page, with data, in the same region. */
                while (i < pg->count) {
                        const uint8_t *q = e;
                        if (get64(&q) != gpa + len || !vhm_vm_gpa_to_host(vm, gpa, len + VHM_REC_PAGE_SIZE))
                                break;
                        e = q;
                        len += VHM_REC_PAGE_SIZE;
                        i++;
                }
                int r = recv_run(s, vm, gpa, len, deadline);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* PAGES into guest memory: the count and the page list first, every gpa checked, then the data in place. */
static int recv_pages_vm(struct vhm_stream *s, struct vhm_vm *vm, const struct vhm_rec_hello *layout, uint32_t length,
                         uint64_t deadline, struct vhm_rec_pages *pg) {
        size_t head_max = 4u + 8u * VHM_REC_MAX_PAGES_PER_BATCH;
        int r = grow_buf(s, head_max, "PAGES");
        if (r == 0)
                r = read_exact(s, s->buf, 4, deadline, "PAGES");
        if (r < 0)
                return r;
        const uint8_t *p = s->buf;
        uint32_t count = get32(&p);
        if (count < 1 || count > VHM_REC_MAX_PAGES_PER_BATCH)
                return sfail(s, -EBADMSG, "PAGES: count %u (1..%u)", count, VHM_REC_MAX_PAGES_PER_BATCH);
        if (length < 4u + 8u * count)
                return sfail(s, -EBADMSG, "PAGES: %u bytes, too short for %u entries", length, count);
        r = read_exact(s, s->buf + 4, 8u * count, deadline, "PAGES");
        if (r < 0)
                return r;
        *pg = (struct vhm_rec_pages){ .count = count, .entries = s->buf + 4 };
        r = check_page_list(pg, length, layout, s->error, sizeof(s->error));
        if (r < 0)
                return r;
        return recv_page_data(s, vm, pg, deadline);
}

int vhm_stream_recv_vm(struct vhm_stream *s, struct vhm_vm *vm, const struct vhm_rec_hello *layout,
                       const void **payload, uint32_t *len, struct vhm_rec_pages *pg) {
        uint64_t deadline = call_deadline(s);
        const struct vhm_rec_info *info = NULL;
        uint32_t length = 0;
        int type = recv_header(s, deadline, &info, &length), r;
        if (type < 0)
                return type;
        if (type == VHM_REC_PAGES && vm && layout && pg) {
                r = recv_pages_vm(s, vm, layout, length, deadline, pg);
                length = 4u + 8u * (pg->count);
        } else {
                r = grow_buf(s, length, info->name);
                if (r == 0)
                        r = read_exact(s, s->buf, length, deadline, info->name);
        }
        if (r < 0)
                return r;
        advance_phase(s, (uint16_t) type);
        *payload = s->buf;
        *len = length;
        return type;
}

/* ---- typed senders ---- */

int vhm_stream_send_hello(struct vhm_stream *s, const struct vhm_rec_hello *h) {
        uint8_t buf[VHM_REC_HELLO_MAX_LEN];
        int r = vhm_rec_check_hello(h, s->error, sizeof(s->error));
        if (r < 0)
                return -EINVAL;
        int len = vhm_rec_encode_hello(h, buf, sizeof(buf));
        return vhm_stream_send(s, VHM_REC_HELLO, buf, (uint32_t) len);
}

int vhm_stream_send_auth(struct vhm_stream *s, const char *token) {
        if (!token || strlen(token) != VHM_REC_TOKEN_LEN)
                return sfail(s, -EINVAL, "AUTH: the token is not %u characters", VHM_REC_TOKEN_LEN);
        return vhm_stream_send(s, VHM_REC_AUTH, token, VHM_REC_TOKEN_LEN);
}

int vhm_stream_send_pages(struct vhm_stream *s, const struct vhm_rec_page *pages, unsigned count, unsigned *zero) {
        if (count < 1 || count > VHM_REC_MAX_PAGES_PER_BATCH)
                return sfail(s, -EINVAL, "PAGES: count %u (1..%u)", count, VHM_REC_MAX_PAGES_PER_BATCH);
        uint8_t head[4u + 8u * VHM_REC_MAX_PAGES_PER_BATCH], *p = head;
        struct iovec iov[1 + VHM_REC_MAX_PAGES_PER_BATCH];
        unsigned n = 1, zeros = 0;
        put32(&p, count);
        for (unsigned i = 0; i < count; i++) {
                if (pages[i].gpa & VHM_REC_PAGE_FLAGS_MASK)
                        return sfail(s, -EINVAL, "PAGES: gpa 0x%" PRIx64 " is not page aligned", pages[i].gpa);
                bool is_zero = !pages[i].data || vhm_page_is_zero(pages[i].data);
                put64(&p, pages[i].gpa | (is_zero ? VHM_REC_PAGE_ZERO : 0));
                if (is_zero)
                        zeros++;
                else if (n > 1 && (const uint8_t *) iov[n - 1].iov_base + iov[n - 1].iov_len == pages[i].data)
                        iov[n - 1].iov_len += VHM_REC_PAGE_SIZE; /* adjacent in memory: one piece, one copy */
                else
                        iov[n++] = (struct iovec){ (void *) pages[i].data, VHM_REC_PAGE_SIZE };
        }
        iov[0] = (struct iovec){ head, 4u + 8u * count };
        int r = vhm_stream_sendv(s, VHM_REC_PAGES, iov, n);
        if (r >= 0 && zero)
                *zero = zeros;
        return r;
}

/*
 * Over TLS GnuTLS reads the pages in user space, so they are copied out
 * through the guard first: TLS_CHUNK at a time, each encrypted while it is
 * still in cache, instead of the whole batch copied out and then read again
 * from memory.  iov[0] is the count and page list, iov[1..n) the runs at
 * gpa[1..n).  A page found gone fails the call after part of the record
 * went out: the stream is unusable then, as on a plain stream.
 */
static int send_tls_runs(struct vhm_stream *s, struct vhm_vm *vm, const struct iovec *iov, const uint64_t *gpa,
                         unsigned n) {
        if (!s->bounce && !(s->bounce = malloc(TLS_CHUNK)))
                return sfail(s, -ENOMEM, "PAGES: out of memory");
        if (cancelled(s))
                return sfail(s, -ECANCELED, "PAGES: cancelled");
        uint64_t total = 0;
        for (unsigned i = 0; i < n; i++)
                total += iov[i].iov_len;
        uint8_t hdr[VHM_REC_HDR_SIZE], *p = hdr;
        put16(&p, VHM_REC_PAGES);
        put16(&p, 0);
        put32(&p, (uint32_t) total);
        struct iovec head[2] = { { hdr, sizeof(hdr) }, iov[0] };
        int r = write_iov(s, head, 2, "PAGES", false);
        for (unsigned i = 1; r == 0 && i < n; i++)
                for (size_t off = 0; r == 0 && off < iov[i].iov_len; off += TLS_CHUNK) {
                        size_t k = iov[i].iov_len - off < TLS_CHUNK ? iov[i].iov_len - off : TLS_CHUNK;
                        if (vhm_vm_read(vm, gpa[i] + off, s->bounce, k) < 0)
                                return sfail(s, -EIO, "PAGES: %s", vhm_vm_error(vm));
                        struct iovec c = { s->bounce, k };
                        r = write_iov(s, &c, 1, "PAGES", false);
                }
        if (r == 0)
                r = write_iov(s, NULL, 0, "PAGES", true);
        if (r == 0)
                s->sent_source = true;
        return r;
}

/* The runs that failed with EFAULT: the page that is gone, named as the guarded path names it. */
static int runs_failed(struct vhm_stream *s, struct vhm_vm *vm, const struct iovec *iov, const uint64_t *gpa,
                       unsigned n) {
        for (unsigned i = 1; i < n; i++) {
                int r = vhm_vm_kernel_io_failed(vm, gpa[i], iov[i].iov_len, "PAGES: sending");
                if (r == -EIO)
                        return sfail(s, r, "PAGES: %s", vhm_vm_error(vm));
        }
        return sfail(s, -EFAULT, "PAGES: sending: %s", strerror(EFAULT));
}

int vhm_stream_send_vm_pages(struct vhm_stream *s, struct vhm_vm *vm, const struct vhm_rec_vm_page *pages,
                             unsigned count) {
        if (count < 1 || count > VHM_REC_MAX_PAGES_PER_BATCH)
                return sfail(s, -EINVAL, "PAGES: count %u (1..%u)", count, VHM_REC_MAX_PAGES_PER_BATCH);
        uint8_t head[4u + 8u * VHM_REC_MAX_PAGES_PER_BATCH], *p = head;
        struct iovec iov[1 + VHM_REC_MAX_PAGES_PER_BATCH];
        uint64_t gpa[1 + VHM_REC_MAX_PAGES_PER_BATCH];
        unsigned n = 1;
        put32(&p, count);
        for (unsigned i = 0; i < count; i++) {
                if (pages[i].gpa & VHM_REC_PAGE_FLAGS_MASK)
                        return sfail(s, -EINVAL, "PAGES: gpa 0x%" PRIx64 " is not page aligned", pages[i].gpa);
                put64(&p, pages[i].gpa | (pages[i].zero ? VHM_REC_PAGE_ZERO : 0));
                if (pages[i].zero)
                        continue;
                struct iovec v;
                if (vhm_vm_kernel_iov(vm, pages[i].gpa, VHM_REC_PAGE_SIZE, &v) < 0)
                        return sfail(s, -EFAULT, "PAGES: %s", vhm_vm_error(vm));
                if (n > 1 && (uint8_t *) iov[n - 1].iov_base + iov[n - 1].iov_len == v.iov_base &&
                    gpa[n - 1] + iov[n - 1].iov_len == pages[i].gpa)
                        iov[n - 1].iov_len += VHM_REC_PAGE_SIZE; /* the next page of the same region: one piece */
                else
                        gpa[n] = pages[i].gpa, iov[n++] = v;
        }
        iov[0] = (struct iovec){ head, 4u + 8u * count };
        if (s->tls)
                return send_tls_runs(s, vm, iov, gpa, n);
        int r = vhm_stream_sendv(s, VHM_REC_PAGES, iov, n);
        if (r == -EFAULT)
                return runs_failed(s, vm, iov, gpa, n);
        return r;
}

int vhm_stream_send_device(struct vhm_stream *s, const struct vhm_rec_device *d) {
        uint8_t buf[VHM_REC_DEVICE_MAX_LEN];
        int r = vhm_rec_check_device(d, s->error, sizeof(s->error));
        if (r < 0)
                return -EINVAL;
        int len = vhm_rec_encode_device(d, buf, sizeof(buf));
        return vhm_stream_send(s, VHM_REC_DEVICE, buf, (uint32_t) len);
}

int vhm_stream_send_backend_state(struct vhm_stream *s, uint32_t index, const void *blob, size_t len) {
        if (len > VHM_REC_MAX_BLOB)
                return sfail(s, -EFBIG, "BACKEND_STATE %u: %zu bytes (at most %u)", index, len, VHM_REC_MAX_BLOB);
        uint8_t idx[4], *p = idx;
        put32(&p, index);
        const uint8_t *b = blob;
        /* Full chunks, the rest, then the empty record that ends the blob. */
        for (size_t off = 0;;) {
                size_t k = len - off < VHM_REC_MAX_BLOB_CHUNK ? len - off : VHM_REC_MAX_BLOB_CHUNK;
                struct iovec iov[2] = { { idx, 4 }, { (void *) (b + off), k } };
                int r = vhm_stream_sendv(s, VHM_REC_BACKEND_STATE, iov, k ? 2 : 1);
                if (r < 0 || k == 0)
                        return r;
                off += k;
        }
}

int vhm_stream_send_end(struct vhm_stream *s, const struct vhm_rec_end *e) {
        uint8_t buf[VHM_REC_END_LEN];
        int len = vhm_rec_encode_end(e, buf, sizeof(buf));
        if (len < 0)
                return sfail(s, len, "END: %" PRIu64 " zero pages of %" PRIu64, e->zero_pages, e->pages);
        return vhm_stream_send(s, VHM_REC_END, buf, (uint32_t) len);
}

int vhm_stream_send_committed(struct vhm_stream *s) {
        return vhm_stream_send(s, VHM_REC_COMMITTED, NULL, 0);
}

int vhm_stream_send_aborted(struct vhm_stream *s, const char *reason) {
        size_t len = reason ? strnlen(reason, VHM_REC_MAX_REASON) : 0;
        return vhm_stream_send(s, VHM_REC_ABORTED, reason, (uint32_t) len);
}
