/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One front-end connection of the test back-end: receive, validate against
 * the request table, record, keep state, answer, and misbehave on request.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proto/vhost-user-table.h"
#include "proto/vhost-user-transport.h"
#include "tests/backend/tb-internal.h"

#define TB_RINGS     256 /* KICK/CALL/ERR carry 8 bits of index */
#define TB_PENDING   TB_MAX_BACKEND_REQS
#define PAGE_SIZE_4K 4096u
#define MAX_RING_NUM 32768u

struct tb_region {
        struct vhu_mem_region r;
        void *map;
        size_t map_len;
        int fd; /* kept for truncate-memory; -1 when unused */
        bool used;
};

struct tb_ring {
        uint32_t num, base;
        struct vhu_vring_addr addr;
        bool has_addr, enabled, started;
        int kick_fd, call_fd, err_fd;
};

/* One SET_DEVICE_STATE_FD transfer, run by a thread as real back-ends do (the pipe may be full). */
struct tb_transfer {
        bool active;
        pthread_t thread;
        int fd;
        uint32_t direction;
        unsigned timeout_ms;
        uint8_t *data; /* save: a copy of the state; load: what arrived */
        size_t len, cap;
        int result; /* 0 or a negative errno */
        char why[128];
};

struct tb_conn {
        struct tb_server *srv;
        const struct tb_config *cfg;
        int sock;
        unsigned id;

        uint64_t offered, pf_offered;
        uint64_t features, pf;
        bool features_set, pf_set, owner;
        uint64_t status;

        struct tb_region *regions;
        unsigned nslots;
        struct tb_ring rings[TB_RINGS];

        bool has_log;
        int log_fd;
        void *log_map;
        size_t log_map_len;
        uint64_t log_size, log_offset;
        dev_t log_dev;
        ino_t log_ino;
        int log_call_fd;

        int inflight_fd;
        void *inflight_map;
        size_t inflight_map_len;

        int backend_fd;
        uint32_t pending[TB_PENDING];
        unsigned npending;
        bool breq_done[TB_MAX_BACKEND_REQS];

        uint8_t config[VHU_MAX_CONFIG_SIZE];
        int64_t next_session;

        struct tb_transfer transfer;

        const char *end_reason;
};

/* ---------------------------------------------------------------- record */

void tb_record(struct tb_server *srv, const char *fmt, ...) {
        char line[2048];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (srv->rec) {
                fputs(line, srv->rec);
                fputc('\n', srv->rec);
                fflush(srv->rec);
        }
        if (srv->cfg->verbose)
                fprintf(stderr, "vhm-test-backend: %s\n", line);
}

static void violation(struct tb_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void violation(struct tb_conn *c, const char *fmt, ...) {
        char text[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        tb_record(c->srv, "VIOLATION %s", text);
}

static bool has_pf(const struct tb_conn *c, unsigned bit) {
        return c->pf & VHU_BIT(bit);
}

/* ---------------------------------------------------------------- state */

static void close_fd(int *fd) {
        if (*fd >= 0)
                close(*fd);
        *fd = -1;
}

static void unmap(void **map, size_t *len) {
        if (*map)
                munmap(*map, *len);
        *map = NULL;
        *len = 0;
}

static void reset_ring(struct tb_ring *r) {
        close_fd(&r->kick_fd);
        close_fd(&r->call_fd);
        close_fd(&r->err_fd);
        memset(r, 0, sizeof(*r));
        r->kick_fd = r->call_fd = r->err_fd = -1;
}

static void reset_rings(struct tb_conn *c) {
        for (unsigned i = 0; i < TB_RINGS; i++)
                reset_ring(&c->rings[i]);
}

static void drop_region(struct tb_region *reg) {
        unmap(&reg->map, &reg->map_len);
        close_fd(&reg->fd);
        memset(reg, 0, sizeof(*reg));
        reg->fd = -1;
}

static void drop_log(struct tb_conn *c) {
        unmap(&c->log_map, &c->log_map_len);
        close_fd(&c->log_fd);
        c->has_log = false;
        c->log_size = c->log_offset = 0;
}

static void close_backend_channel(struct tb_conn *c, bool record) {
        if (c->backend_fd < 0)
                return;
        if (record) {
                for (unsigned i = 0; i < c->npending; i++)
                        tb_record(c->srv, "BACKEND_REPLY %s closed", vhu_backend_request_name(c->pending[i]));
                tb_record(c->srv, "BACKEND_CHANNEL_CLOSED");
        }
        close_fd(&c->backend_fd);
        c->npending = 0;
}

static int conn_init(struct tb_conn *c, struct tb_server *srv, int sock) {
        memset(c, 0, sizeof(*c));
        c->srv = srv;
        c->cfg = srv->cfg;
        c->sock = sock;
        c->id = ++srv->connections;
        c->offered = tb_config_features(c->cfg);
        c->pf_offered = tb_config_protocol_features(c->cfg);
        c->nslots = c->cfg->max_mem_slots;
        if (c->nslots < VHU_MAX_MEM_REGIONS)
                c->nslots = VHU_MAX_MEM_REGIONS;
        if (c->nslots > TB_MAX_MEM_SLOTS)
                c->nslots = TB_MAX_MEM_SLOTS;
        c->regions = calloc(c->nslots, sizeof(*c->regions));
        if (!c->regions)
                return -ENOMEM;
        for (unsigned i = 0; i < c->nslots; i++)
                c->regions[i].fd = -1;
        for (unsigned i = 0; i < TB_RINGS; i++)
                c->rings[i].kick_fd = c->rings[i].call_fd = c->rings[i].err_fd = -1;
        c->log_fd = c->log_call_fd = c->inflight_fd = c->backend_fd = -1;
        /* Deterministic config space: byte i holds i ^ 0xa5. */
        for (unsigned i = 0; i < VHU_MAX_CONFIG_SIZE; i++)
                c->config[i] = (uint8_t) (i ^ 0xa5);
        return 0;
}

static void finish_transfer(struct tb_conn *c);

static void conn_fini(struct tb_conn *c) {
        finish_transfer(c);
        reset_rings(c);
        for (unsigned i = 0; c->regions && i < c->nslots; i++)
                drop_region(&c->regions[i]);
        free(c->regions);
        c->regions = NULL;
        drop_log(c);
        close_fd(&c->log_call_fd);
        unmap(&c->inflight_map, &c->inflight_map_len);
        close_fd(&c->inflight_fd);
        close_backend_channel(c, false);
        close_fd(&c->sock);
}

/* ---------------------------------------------------------------- log coverage */

/* Guest-physical bytes the current log covers: one bit per 4 KiB page. */
static uint64_t log_covered(const struct tb_conn *c) {
        if (c->log_size > UINT64_MAX / (8u * PAGE_SIZE_4K))
                return UINT64_MAX;
        return c->log_size * 8u * PAGE_SIZE_4K;
}

static void check_log_regions(struct tb_conn *c, const char *when) {
        if (!c->has_log || !(c->features & VHU_BIT(VHU_VF_LOG_ALL)))
                return;
        uint64_t covered = log_covered(c);
        for (unsigned i = 0; i < c->nslots; i++) {
                const struct tb_region *reg = &c->regions[i];
                if (!reg->used)
                        continue;
                uint64_t end = reg->r.guest_phys_addr + reg->r.memory_size;
                if (end > covered)
                        violation(c,
                                  "%s: log of 0x%" PRIx64 " bytes covers guest memory up to 0x%" PRIx64
                                  " but region gpa 0x%" PRIx64 " ends at 0x%" PRIx64,
                                  when, c->log_size, covered, reg->r.guest_phys_addr, end);
        }
}

static void check_log_ring(struct tb_conn *c, unsigned index, const char *when) {
        const struct tb_ring *r = &c->rings[index];
        if (!c->has_log || !r->has_addr || !(r->addr.flags & VHU_VRING_F_LOG))
                return;
        /* Split used ring: flags, idx, num elements, and avail_event with EVENT_IDX. */
        uint64_t num = r->num ? r->num : 1;
        uint64_t tail = (c->features & VHU_BIT(VHU_VF_RING_EVENT_IDX)) ? 2 : 0;
        uint64_t end = r->addr.log_guest_addr + 4 + 8 * num + tail;
        if (end > log_covered(c))
                violation(c,
                          "%s: log of 0x%" PRIx64 " bytes covers guest memory up to 0x%" PRIx64
                          " but ring %u's used ring at 0x%" PRIx64 " ends at 0x%" PRIx64,
                          when, c->log_size, log_covered(c), index, r->addr.log_guest_addr, end);
}

static void check_log_all(struct tb_conn *c, const char *when) {
        check_log_regions(c, when);
        for (unsigned i = 0; i < TB_RINGS; i++)
                check_log_ring(c, i, when);
}

/* ---------------------------------------------------------------- helpers */

/* The ring an index names, recording a violation when it is out of range. */
static struct tb_ring *ring_at(struct tb_conn *c, const char *name, uint32_t index) {
        unsigned limit = 2 * (has_pf(c, VHU_PF_MQ) ? c->cfg->queues : 1);
        if (index >= TB_RINGS) {
                violation(c, "%s: ring index %u out of range", name, index);
                return NULL;
        }
        if (index >= limit)
                violation(c, "%s: ring index %u beyond the %u rings of this device", name, index, limit);
        return &c->rings[index];
}

/* Maps [0, offset + size) of fd to prove it is real memory of that size. */
static int map_fd(struct tb_conn *c, const char *what, int fd, uint64_t offset, uint64_t size, void **map,
                  size_t *len) {
        struct stat st;
        if (size == 0) {
                violation(c, "%s: empty mapping", what);
                return -EINVAL;
        }
        if (offset > SIZE_MAX - size) {
                violation(c, "%s: offset 0x%" PRIx64 " + size 0x%" PRIx64 " overflows", what, offset, size);
                return -EINVAL;
        }
        if (fstat(fd, &st) < 0) {
                violation(c, "%s: fd %d is not valid: %s", what, fd, strerror(errno));
                return -EBADF;
        }
        if (S_ISREG(st.st_mode) && (uint64_t) st.st_size < offset + size) {
                violation(c, "%s: fd holds 0x%" PRIx64 " bytes, less than offset 0x%" PRIx64 " + size 0x%" PRIx64, what,
                          (uint64_t) st.st_size, offset, size);
                return -EINVAL;
        }
        void *p = mmap(NULL, offset + size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
                violation(c, "%s: mmap of 0x%" PRIx64 " bytes failed: %s", what, offset + size, strerror(errno));
                return -errno;
        }
        *map = p;
        *len = offset + size;
        return 0;
}

static bool regions_overlap(const struct vhu_mem_region *a, const struct vhu_mem_region *b) {
        return a->guest_phys_addr < b->guest_phys_addr + b->memory_size &&
               b->guest_phys_addr < a->guest_phys_addr + a->memory_size;
}

static void check_overlaps(struct tb_conn *c, const char *name) {
        for (unsigned i = 0; i < c->nslots; i++)
                for (unsigned j = i + 1; j < c->nslots; j++)
                        if (c->regions[i].used && c->regions[j].used &&
                            regions_overlap(&c->regions[i].r, &c->regions[j].r))
                                violation(c, "%s: regions at gpa 0x%" PRIx64 " and 0x%" PRIx64 " overlap", name,
                                          c->regions[i].r.guest_phys_addr, c->regions[j].r.guest_phys_addr);
}

static void set_u64(struct vhu_msg *reply, uint64_t v) {
        reply->payload.u64 = v;
        reply->hdr.size = sizeof(uint64_t);
}

/* Takes fd index i of the message: the caller keeps it. */
static int take_fd(struct vhu_msg *m, unsigned i) {
        if (i >= m->nfds)
                return -1;
        int fd = m->fds[i];
        m->fds[i] = -1;
        return fd;
}

static void replace_fd(int *slot, int fd) {
        close_fd(slot);
        *slot = fd;
}

/* ---------------------------------------------------------------- handlers */

/*
 * A handler applies one request.  It returns the REPLY_ACK status (0 = done),
 * fills `reply` when the request has a reply body, and takes the fds it keeps
 * (take_fd); the caller closes the rest.
 */
typedef uint64_t (*handler_fn)(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply);

static uint64_t h_get_features(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        set_u64(reply, c->offered);
        return 0;
}

static uint64_t h_set_features(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        uint64_t v = m->payload.u64;
        if (v & ~c->offered)
                violation(c, "SET_FEATURES 0x%" PRIx64 " acknowledges bits not offered: 0x%" PRIx64, v,
                          v & ~c->offered);
        c->features = v;
        c->features_set = true;
        check_log_regions(c, "SET_FEATURES");
        return 0;
}

static uint64_t h_set_owner(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        (void) reply;
        if (c->owner)
                violation(c, "SET_OWNER sent twice on one connection");
        c->owner = true;
        return 0;
}

static uint64_t h_reset_owner(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        (void) reply;
        c->owner = false;
        c->features = 0;
        c->features_set = false;
        reset_rings(c);
        return 0;
}

static uint64_t h_set_mem_table(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        const struct vhu_mem_table *t = &m->payload.mem;
        struct tb_region fresh[VHU_MAX_MEM_REGIONS];

        if (t->nregions == 0 || t->nregions > VHU_MAX_MEM_REGIONS || m->hdr.size != vhu_mem_table_size(t->nregions)) {
                violation(c, "SET_MEM_TABLE: %u regions in a payload of %u bytes", t->nregions, m->hdr.size);
                return 1;
        }
        if (m->nfds != t->nregions) {
                violation(c, "SET_MEM_TABLE: %u regions but %u fds", t->nregions, m->nfds);
                return 1;
        }
        memset(fresh, 0, sizeof(fresh));
        for (unsigned i = 0; i < t->nregions; i++) {
                char what[64];
                snprintf(what, sizeof(what), "SET_MEM_TABLE region %u", i);
                fresh[i].r = t->regions[i];
                fresh[i].fd = -1;
                fresh[i].used = true;
                if (map_fd(c, what, m->fds[i], t->regions[i].mmap_offset, t->regions[i].memory_size, &fresh[i].map,
                           &fresh[i].map_len) < 0) {
                        for (unsigned j = 0; j < i; j++)
                                drop_region(&fresh[j]);
                        return 1;
                }
        }
        /* The new table replaces every region, including those added one by one. */
        for (unsigned i = 0; i < c->nslots; i++)
                drop_region(&c->regions[i]);
        for (unsigned i = 0; i < t->nregions; i++)
                fresh[i].fd = take_fd(m, i);
        memcpy(c->regions, fresh, t->nregions * sizeof(fresh[0]));
        check_overlaps(c, "SET_MEM_TABLE");
        check_log_regions(c, "SET_MEM_TABLE");
        return 0;
}

static uint64_t h_set_log_base(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        const struct vhu_log *log = &m->payload.log;
        struct stat st;
        void *map = NULL;
        size_t len = 0;

        /* Whatever happens, the reply (when one is due) has the configured size. */
        reply->hdr.size = c->cfg->log_reply_size;
        if (m->nfds < 1)
                return 1;
        if (fstat(m->fds[0], &st) < 0) {
                violation(c, "SET_LOG_BASE: invalid fd");
                return 1;
        }
        if (c->has_log && st.st_dev == c->log_dev && st.st_ino == c->log_ino && log->mmap_size == c->log_size &&
            log->mmap_offset == c->log_offset)
                violation(c,
                          "SET_LOG_BASE sent again for the same log (mmap_size 0x%" PRIx64 " mmap_offset 0x%" PRIx64
                          ")",
                          log->mmap_size, log->mmap_offset);
        if (map_fd(c, "SET_LOG_BASE", m->fds[0], log->mmap_offset, log->mmap_size, &map, &len) < 0)
                return 1;
        drop_log(c);
        c->has_log = true;
        c->log_fd = take_fd(m, 0);
        c->log_map = map;
        c->log_map_len = len;
        c->log_size = log->mmap_size;
        c->log_offset = log->mmap_offset;
        c->log_dev = st.st_dev;
        c->log_ino = st.st_ino;
        check_log_all(c, "SET_LOG_BASE");
        return 0;
}

static uint64_t h_set_log_fd(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        if (m->nfds < 1)
                return 1;
        replace_fd(&c->log_call_fd, take_fd(m, 0));
        return 0;
}

static uint64_t h_set_vring_num(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        struct tb_ring *r = ring_at(c, "SET_VRING_NUM", m->payload.state.index);
        if (!r)
                return 1;
        uint32_t num = m->payload.state.num;
        if (num == 0 || num > MAX_RING_NUM)
                violation(c, "SET_VRING_NUM: ring %u size %u out of range", m->payload.state.index, num);
        r->num = num;
        check_log_ring(c, m->payload.state.index, "SET_VRING_NUM");
        return 0;
}

static uint64_t h_set_vring_addr(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        const struct vhu_vring_addr *a = &m->payload.addr;
        struct tb_ring *r = ring_at(c, "SET_VRING_ADDR", a->index);
        if (!r)
                return 1;
        if (a->flags & ~VHU_VRING_F_LOG)
                violation(c, "SET_VRING_ADDR: ring %u unknown flags 0x%x", a->index, a->flags);
        if ((a->flags & VHU_VRING_F_LOG) && !c->has_log)
                violation(c, "SET_VRING_ADDR: ring %u sets the LOG flag before any SET_LOG_BASE", a->index);
        r->addr = *a;
        r->has_addr = true;
        check_log_ring(c, a->index, "SET_VRING_ADDR");
        return 0;
}

static uint64_t h_set_vring_base(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        struct tb_ring *r = ring_at(c, "SET_VRING_BASE", m->payload.state.index);
        if (!r)
                return 1;
        r->base = m->payload.state.num;
        return 0;
}

static uint64_t h_get_vring_base(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        uint32_t index = m->payload.state.index;
        struct tb_ring *r = ring_at(c, "GET_VRING_BASE", index);
        reply->payload.state.index = index;
        reply->payload.state.num = r ? r->base : 0;
        reply->hdr.size = sizeof(struct vhu_vring_state);
        if (r)
                r->started = false;
        return 0;
}

/* KICK, CALL and ERR: u64 index | NOFD, and an fd unless NOFD. */
static uint64_t set_vring_fd(struct tb_conn *c, struct vhu_msg *m, const char *name, size_t slot_offset) {
        uint64_t v = m->payload.u64;
        bool nofd = v & VHU_VRING_NOFD_MASK;
        if (v & ~(uint64_t) (VHU_VRING_IDX_MASK | VHU_VRING_NOFD_MASK))
                violation(c, "%s: unknown bits in 0x%" PRIx64, name, v);
        if (nofd && m->nfds > 0)
                violation(c, "%s: NOFD set but %u fds attached", name, m->nfds);
        if (!nofd && m->nfds == 0)
                violation(c, "%s: no fd and NOFD not set", name);
        struct tb_ring *r = ring_at(c, name, (uint32_t) (v & VHU_VRING_IDX_MASK));
        if (!r)
                return 1;
        int *slot = (int *) ((char *) r + slot_offset);
        replace_fd(slot, nofd ? -1 : take_fd(m, 0));
        return 0;
}

static uint64_t h_set_vring_kick(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        uint64_t st = set_vring_fd(c, m, "SET_VRING_KICK", offsetof(struct tb_ring, kick_fd));
        if (st == 0)
                c->rings[m->payload.u64 & VHU_VRING_IDX_MASK].started = true;
        return st;
}

static uint64_t h_set_vring_call(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        return set_vring_fd(c, m, "SET_VRING_CALL", offsetof(struct tb_ring, call_fd));
}

static uint64_t h_set_vring_err(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        return set_vring_fd(c, m, "SET_VRING_ERR", offsetof(struct tb_ring, err_fd));
}

static uint64_t h_get_protocol_features(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        set_u64(reply, c->pf_offered);
        return 0;
}

static uint64_t h_set_protocol_features(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        uint64_t v = m->payload.u64;
        if (v & ~c->pf_offered)
                violation(c, "SET_PROTOCOL_FEATURES 0x%" PRIx64 " acknowledges bits not offered: 0x%" PRIx64, v,
                          v & ~c->pf_offered);
        if (vhu_protocol_features_consistent(v) != v)
                violation(c,
                          "SET_PROTOCOL_FEATURES 0x%" PRIx64 " acknowledges 0x%" PRIx64 " without their prerequisites",
                          v, v & ~vhu_protocol_features_consistent(v));
        c->pf = v;
        c->pf_set = true;
        return 0;
}

static uint64_t h_get_queue_num(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        set_u64(reply, c->cfg->queues);
        return 0;
}

static uint64_t h_set_vring_enable(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        struct tb_ring *r = ring_at(c, "SET_VRING_ENABLE", m->payload.state.index);
        if (!r)
                return 1;
        if (!(c->features & VHU_BIT(VHU_VF_PROTOCOL_FEATURES)))
                violation(c, "SET_VRING_ENABLE: ring %u, but SET_FEATURES did not acknowledge PROTOCOL_FEATURES",
                          m->payload.state.index);
        if (m->payload.state.num > 1)
                violation(c, "SET_VRING_ENABLE: ring %u value %u is neither 0 nor 1", m->payload.state.index,
                          m->payload.state.num);
        r->enabled = m->payload.state.num != 0;
        return 0;
}

static uint64_t h_send_rarp(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        (void) reply;
        if (c->features & VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE))
                violation(c, "SEND_RARP although the guest negotiated GUEST_ANNOUNCE");
        return 0;
}

static uint64_t h_net_set_mtu(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        uint64_t mtu = m->payload.u64;
        if (mtu < 68 || mtu > 65535) {
                violation(c, "NET_SET_MTU: %" PRIu64 " out of range", mtu);
                return 1;
        }
        return 0;
}

static uint64_t h_set_backend_req_fd(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        if (m->nfds < 1)
                return 1;
        close_backend_channel(c, false);
        c->backend_fd = take_fd(m, 0);
        if (vhu_fd_prepare(c->backend_fd) < 0) {
                violation(c, "SET_BACKEND_REQ_FD: fd is not usable");
                close_fd(&c->backend_fd);
                return 1;
        }
        return 0;
}

static uint64_t h_iotlb_msg(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        if (m->payload.iotlb.type < VHU_IOTLB_MISS || m->payload.iotlb.type > VHU_IOTLB_ACCESS_FAIL) {
                violation(c, "IOTLB_MSG: unknown type %u", m->payload.iotlb.type);
                return 1;
        }
        return 0;
}

static uint64_t h_set_vring_endian(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        return ring_at(c, "SET_VRING_ENDIAN", m->payload.state.index) ? 0 : 1;
}

/* GET/SET_CONFIG: the payload's size field must match the message and the space. */
static bool config_valid(struct tb_conn *c, const char *name, const struct vhu_msg *m) {
        const struct vhu_config *cf = &m->payload.config;
        if (cf->size > VHU_MAX_CONFIG_SIZE || cf->offset > VHU_MAX_CONFIG_SIZE - cf->size) {
                violation(c, "%s: offset %u size %u beyond the %u bytes of config space", name, cf->offset, cf->size,
                          VHU_MAX_CONFIG_SIZE);
                return false;
        }
        if (m->hdr.size != VHU_CONFIG_HDR_SIZE + cf->size) {
                violation(c, "%s: message of %u bytes for %u config bytes", name, m->hdr.size, cf->size);
                return false;
        }
        return true;
}

static uint64_t h_get_config(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        const struct vhu_config *cf = &m->payload.config;
        reply->payload.config.offset = cf->offset;
        reply->payload.config.flags = cf->flags;
        if (!config_valid(c, "GET_CONFIG", m)) {
                reply->payload.config.size = 0;
                reply->hdr.size = VHU_CONFIG_HDR_SIZE;
                return 1;
        }
        reply->payload.config.size = cf->size;
        memcpy(reply->payload.config.region, c->config + cf->offset, cf->size);
        reply->hdr.size = VHU_CONFIG_HDR_SIZE + cf->size;
        return 0;
}

static uint64_t h_set_config(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        const struct vhu_config *cf = &m->payload.config;
        if (!config_valid(c, "SET_CONFIG", m))
                return 1;
        memcpy(c->config + cf->offset, cf->region, cf->size);
        return 0;
}

static uint64_t h_create_crypto_session(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        memcpy(&reply->payload.crypto, &m->payload.crypto, m->hdr.size);
        reply->payload.crypto.session_id = ++c->next_session;
        reply->hdr.size = m->hdr.size;
        return 0;
}

static uint64_t h_postcopy_advise(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        /* A real back-end returns its userfaultfd; any fd proves the passing. */
        int fd = eventfd(0, EFD_CLOEXEC);
        if (fd < 0) {
                violation(c, "POSTCOPY_ADVISE: back-end could not create an eventfd");
                set_u64(reply, 1);
                return 1;
        }
        reply->fds[0] = fd;
        reply->nfds = 1;
        set_u64(reply, 0);
        return 0;
}

static uint64_t h_postcopy_status(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        if (!(m->hdr.flags & VHU_FLAG_NEED_REPLY))
                violation(c, "%s without NEED_REPLY", vhu_request_name(m->hdr.request));
        set_u64(reply, 0);
        return 0;
}

static uint64_t h_get_inflight_fd(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        const struct vhu_inflight *in = &m->payload.inflight;
        struct vhu_inflight *out = &reply->payload.inflight;

        memset(out, 0, sizeof(*out));
        out->num_queues = in->num_queues;
        out->queue_size = in->queue_size;
        reply->hdr.size = sizeof(*out);
        if (in->num_queues == 0 || in->queue_size == 0 || in->queue_size > MAX_RING_NUM) {
                violation(c, "GET_INFLIGHT_FD: %u queues of %u entries", in->num_queues, in->queue_size);
                return 1;
        }
        /* Per queue: a 16-byte header and a 16-byte entry per descriptor, 64-byte aligned. */
        uint64_t per_queue = (16u + 16u * (uint64_t) in->queue_size + 63u) & ~UINT64_C(63);
        uint64_t size = (per_queue * in->num_queues + PAGE_SIZE_4K - 1) & ~(uint64_t) (PAGE_SIZE_4K - 1);
        int fd = memfd_create("tb-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, (off_t) size) < 0) {
                if (fd >= 0)
                        close(fd);
                violation(c, "GET_INFLIGHT_FD: back-end could not create its area");
                return 1;
        }
        int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (dup_fd < 0) {
                close(fd);
                return 1;
        }
        unmap(&c->inflight_map, &c->inflight_map_len);
        replace_fd(&c->inflight_fd, fd);
        out->mmap_size = size;
        out->mmap_offset = 0;
        reply->fds[0] = dup_fd;
        reply->nfds = 1;
        return 0;
}

static uint64_t h_set_inflight_fd(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        const struct vhu_inflight *in = &m->payload.inflight;
        void *map = NULL;
        size_t len = 0;
        if (m->nfds < 1)
                return 1;
        if (map_fd(c, "SET_INFLIGHT_FD", m->fds[0], in->mmap_offset, in->mmap_size, &map, &len) < 0)
                return 1;
        unmap(&c->inflight_map, &c->inflight_map_len);
        replace_fd(&c->inflight_fd, take_fd(m, 0));
        c->inflight_map = map;
        c->inflight_map_len = len;
        return 0;
}

static uint64_t h_nothing(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) c;
        (void) m;
        (void) reply;
        return 0;
}

static uint64_t h_reset_device(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        (void) reply;
        c->features = 0;
        c->features_set = false;
        c->status = 0;
        reset_rings(c);
        return 0;
}

static uint64_t h_vring_kick(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        return ring_at(c, "VRING_KICK", m->payload.state.index) ? 0 : 1;
}

static uint64_t h_get_max_mem_slots(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        set_u64(reply, c->cfg->max_mem_slots);
        return 0;
}

static uint64_t h_add_mem_reg(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        const struct vhu_mem_region *r = &m->payload.mem_reg.region;
        unsigned used = 0, free_slot = c->nslots;
        if (m->nfds < 1)
                return 1;
        for (unsigned i = 0; i < c->nslots; i++) {
                if (c->regions[i].used)
                        used++;
                else if (free_slot == c->nslots)
                        free_slot = i;
        }
        if (used >= c->cfg->max_mem_slots || free_slot == c->nslots) {
                violation(c, "ADD_MEM_REG: more than the %u memory slots offered", c->cfg->max_mem_slots);
                return 1;
        }
        struct tb_region *reg = &c->regions[free_slot];
        if (map_fd(c, "ADD_MEM_REG", m->fds[0], r->mmap_offset, r->memory_size, &reg->map, &reg->map_len) < 0)
                return 1;
        reg->fd = take_fd(m, 0);
        reg->r = *r;
        reg->used = true;
        check_overlaps(c, "ADD_MEM_REG");
        check_log_regions(c, "ADD_MEM_REG");
        return 0;
}

static uint64_t h_rem_mem_reg(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        const struct vhu_mem_region *r = &m->payload.mem_reg.region;
        for (unsigned i = 0; i < c->nslots; i++) {
                struct tb_region *reg = &c->regions[i];
                if (reg->used && reg->r.guest_phys_addr == r->guest_phys_addr && reg->r.memory_size == r->memory_size) {
                        drop_region(reg);
                        return 0;
                }
        }
        violation(c, "REM_MEM_REG: no region at gpa 0x%" PRIx64 " size 0x%" PRIx64, r->guest_phys_addr, r->memory_size);
        return 1;
}

static uint64_t h_set_status(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) reply;
        if (m->payload.u64 > 0xff)
                violation(c, "SET_STATUS: 0x%" PRIx64 " does not fit the 8-bit device status", m->payload.u64);
        c->status = m->payload.u64;
        return 0;
}

static uint64_t h_get_status(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        set_u64(reply, c->status);
        return 0;
}

static uint64_t h_get_shared_object(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) c;
        (void) m;
        set_u64(reply, 1); /* not found */
        return 0;
}

/* ---------------------------------------------------------------- device state */

/* Waits for fd to be ready until the deadline: 0, or -ETIMEDOUT / -errno. */
static int transfer_wait(int fd, short events, uint64_t deadline) {
        for (;;) {
                uint64_t now = vhu_now_usec();
                if (now >= deadline)
                        return -ETIMEDOUT;
                struct pollfd p = { .fd = fd, .events = events };
                int r = poll(&p, 1, (int) ((deadline - now + 999) / 1000));
                if (r > 0)
                        return 0;
                if (r < 0 && errno != EINTR)
                        return -errno;
        }
}

static int transfer_save(struct tb_transfer *t, uint64_t deadline) {
        for (size_t done = 0; done < t->len;) {
                ssize_t n = write(t->fd, t->data + done, t->len - done);
                if (n > 0)
                        done += (size_t) n;
                else if (n < 0 && errno == EAGAIN) {
                        int r = transfer_wait(t->fd, POLLOUT, deadline);
                        if (r < 0)
                                return r;
                } else if (n < 0 && errno != EINTR)
                        return -errno;
        }
        return 0;
}

static int transfer_load(struct tb_transfer *t, uint64_t deadline) {
        for (;;) {
                if (t->len == t->cap) {
                        if (t->cap >= TB_MAX_DEVICE_STATE)
                                return -EFBIG;
                        size_t cap = t->cap ? 2 * t->cap : 65536;
                        uint8_t *d = realloc(t->data, cap);
                        if (!d)
                                return -ENOMEM;
                        t->data = d;
                        t->cap = cap;
                }
                ssize_t n = read(t->fd, t->data + t->len, t->cap - t->len);
                if (n == 0)
                        return 0;
                if (n > 0)
                        t->len += (size_t) n;
                else if (errno == EAGAIN) {
                        int r = transfer_wait(t->fd, POLLIN, deadline);
                        if (r < 0)
                                return r;
                } else if (errno != EINTR)
                        return -errno;
        }
}

static void *transfer_thread(void *arg) {
        struct tb_transfer *t = arg;
        /* A front-end that stops reading gives EPIPE here, not a SIGPIPE for the whole back-end. */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        uint64_t deadline = vhu_deadline_after_ms(t->timeout_ms);
        t->result = t->direction == VHU_TRANSFER_SAVE ? transfer_save(t, deadline) : transfer_load(t, deadline);
        if (t->result < 0)
                snprintf(t->why, sizeof(t->why), "%s after %zu bytes", strerror(-t->result), t->len);
        /* The writer's close is the reader's EOF (spec). */
        close(t->fd);
        t->fd = -1;
        return NULL;
}

/* Waits for the transfer under way; its buffer is the caller's to keep or free. */
static bool join_transfer(struct tb_conn *c) {
        if (!c->transfer.active)
                return false;
        pthread_join(c->transfer.thread, NULL);
        c->transfer.active = false;
        return true;
}

/* The buffer is the transfer's whether or not its thread still had to be joined (CHECK joins first). */
static void finish_transfer(struct tb_conn *c) {
        join_transfer(c);
        free(c->transfer.data);
        memset(&c->transfer, 0, sizeof(c->transfer));
}

static uint64_t h_set_device_state_fd(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        const struct vhu_device_state *ds = &m->payload.device_state;
        set_u64(reply, VHU_DEVICE_STATE_NOFD_MASK | 1u);
        if (ds->direction > VHU_TRANSFER_LOAD || ds->phase != VHU_TRANSFER_STOPPED) {
                violation(c, "SET_DEVICE_STATE_FD: direction %u phase %u", ds->direction, ds->phase);
                return 1;
        }
        if (m->nfds < 1)
                return 1;
        /* A transfer the front-end never checked ends here. */
        finish_transfer(c);
        struct tb_transfer *t = &c->transfer;
        t->direction = ds->direction;
        t->timeout_ms = c->cfg->io_timeout_ms;
        if (t->direction == VHU_TRANSFER_SAVE && c->srv->state_len) {
                t->data = malloc(c->srv->state_len);
                if (!t->data)
                        return 1;
                memcpy(t->data, c->srv->state, c->srv->state_len);
                t->len = t->cap = c->srv->state_len;
        }
        t->fd = take_fd(m, 0);
        if (pthread_create(&t->thread, NULL, transfer_thread, t) != 0) {
                close_fd(&t->fd);
                finish_transfer(c);
                return 1;
        }
        t->active = true;
        set_u64(reply, VHU_DEVICE_STATE_NOFD_MASK);
        return 0;
}

static uint64_t h_check_device_state(struct tb_conn *c, struct vhu_msg *m, struct vhu_msg *reply) {
        (void) m;
        set_u64(reply, 1);
        if (!join_transfer(c)) {
                violation(c, "CHECK_DEVICE_STATE without a transfer");
                return 0;
        }
        struct tb_transfer *t = &c->transfer;
        const char *dir = t->direction == VHU_TRANSFER_SAVE ? "saved" : "loaded";
        if (t->result < 0) {
                tb_record(c->srv, "DEVICE_STATE failed %s %s", dir, t->why);
        } else {
                tb_record(c->srv, "DEVICE_STATE %s bytes=%zu hash=0x%016" PRIx64, dir, t->len,
                          tb_device_state_hash(t->data, t->len));
                if (t->direction == VHU_TRANSFER_LOAD) {
                        /* What was loaded is the back-end's state from now on. */
                        free(c->srv->state);
                        c->srv->state = t->data;
                        c->srv->state_len = t->len;
                        t->data = NULL;
                }
                set_u64(reply, 0);
        }
        finish_transfer(c);
        return 0;
}

static const handler_fn handlers[VHU_REQ_MAX] = {
        [VHU_REQ_GET_FEATURES] = h_get_features,
        [VHU_REQ_SET_FEATURES] = h_set_features,
        [VHU_REQ_SET_OWNER] = h_set_owner,
        [VHU_REQ_RESET_OWNER] = h_reset_owner,
        [VHU_REQ_SET_MEM_TABLE] = h_set_mem_table,
        [VHU_REQ_SET_LOG_BASE] = h_set_log_base,
        [VHU_REQ_SET_LOG_FD] = h_set_log_fd,
        [VHU_REQ_SET_VRING_NUM] = h_set_vring_num,
        [VHU_REQ_SET_VRING_ADDR] = h_set_vring_addr,
        [VHU_REQ_SET_VRING_BASE] = h_set_vring_base,
        [VHU_REQ_GET_VRING_BASE] = h_get_vring_base,
        [VHU_REQ_SET_VRING_KICK] = h_set_vring_kick,
        [VHU_REQ_SET_VRING_CALL] = h_set_vring_call,
        [VHU_REQ_SET_VRING_ERR] = h_set_vring_err,
        [VHU_REQ_GET_PROTOCOL_FEATURES] = h_get_protocol_features,
        [VHU_REQ_SET_PROTOCOL_FEATURES] = h_set_protocol_features,
        [VHU_REQ_GET_QUEUE_NUM] = h_get_queue_num,
        [VHU_REQ_SET_VRING_ENABLE] = h_set_vring_enable,
        [VHU_REQ_SEND_RARP] = h_send_rarp,
        [VHU_REQ_NET_SET_MTU] = h_net_set_mtu,
        [VHU_REQ_SET_BACKEND_REQ_FD] = h_set_backend_req_fd,
        [VHU_REQ_IOTLB_MSG] = h_iotlb_msg,
        [VHU_REQ_SET_VRING_ENDIAN] = h_set_vring_endian,
        [VHU_REQ_GET_CONFIG] = h_get_config,
        [VHU_REQ_SET_CONFIG] = h_set_config,
        [VHU_REQ_CREATE_CRYPTO_SESSION] = h_create_crypto_session,
        [VHU_REQ_CLOSE_CRYPTO_SESSION] = h_nothing,
        [VHU_REQ_POSTCOPY_ADVISE] = h_postcopy_advise,
        [VHU_REQ_POSTCOPY_LISTEN] = h_postcopy_status,
        [VHU_REQ_POSTCOPY_END] = h_postcopy_status,
        [VHU_REQ_GET_INFLIGHT_FD] = h_get_inflight_fd,
        [VHU_REQ_SET_INFLIGHT_FD] = h_set_inflight_fd,
        [VHU_REQ_GPU_SET_SOCKET] = h_nothing,
        [VHU_REQ_RESET_DEVICE] = h_reset_device,
        [VHU_REQ_VRING_KICK] = h_vring_kick,
        [VHU_REQ_GET_MAX_MEM_SLOTS] = h_get_max_mem_slots,
        [VHU_REQ_ADD_MEM_REG] = h_add_mem_reg,
        [VHU_REQ_REM_MEM_REG] = h_rem_mem_reg,
        [VHU_REQ_SET_STATUS] = h_set_status,
        [VHU_REQ_GET_STATUS] = h_get_status,
        [VHU_REQ_GET_SHARED_OBJECT] = h_get_shared_object,
        [VHU_REQ_SET_DEVICE_STATE_FD] = h_set_device_state_fd,
        [VHU_REQ_CHECK_DEVICE_STATE] = h_check_device_state,
};

/* ---------------------------------------------------------------- record lines */

/* The request's key fields, appended to its record line. */
static void describe(const struct vhu_msg *m, char *buf, size_t len) {
        const union vhu_payload *p = &m->payload;
        size_t used = 0;
        buf[0] = '\0';

#define ADD(...)                                                                        \
        do {                                                                            \
                int n_ = snprintf(buf + used, len - used, __VA_ARGS__);                 \
                if (n_ > 0)                                                             \
                        used = (size_t) n_ < len - used ? used + (size_t) n_ : len - 1; \
        } while (0)

        switch (m->hdr.request) {
        case VHU_REQ_SET_FEATURES:
        case VHU_REQ_SET_PROTOCOL_FEATURES:
                ADD(" features=0x%" PRIx64, p->u64);
                break;
        case VHU_REQ_SET_MEM_TABLE: {
                unsigned n = p->mem.nregions <= VHU_MAX_MEM_REGIONS ? p->mem.nregions : VHU_MAX_MEM_REGIONS;
                ADD(" nregions=%u", p->mem.nregions);
                for (unsigned i = 0; i < n && vhu_mem_table_size(i + 1) <= m->hdr.size; i++)
                        ADD(" gpa%u=0x%" PRIx64 " size%u=0x%" PRIx64 " uaddr%u=0x%" PRIx64 " offset%u=0x%" PRIx64, i,
                            p->mem.regions[i].guest_phys_addr, i, p->mem.regions[i].memory_size, i,
                            p->mem.regions[i].userspace_addr, i, p->mem.regions[i].mmap_offset);
                break;
        }
        case VHU_REQ_SET_LOG_BASE: {
                int seals = m->nfds > 0 ? fcntl(m->fds[0], F_GET_SEALS) : -1;
                ADD(" mmap_size=0x%" PRIx64 " mmap_offset=0x%" PRIx64, p->log.mmap_size, p->log.mmap_offset);
                if (seals >= 0)
                        ADD(" seals=0x%x", (unsigned) seals);
                break;
        }
        case VHU_REQ_SET_VRING_NUM:
        case VHU_REQ_SET_VRING_BASE:
        case VHU_REQ_GET_VRING_BASE:
        case VHU_REQ_SET_VRING_ENABLE:
        case VHU_REQ_SET_VRING_ENDIAN:
        case VHU_REQ_VRING_KICK:
                ADD(" index=%u num=%u", p->state.index, p->state.num);
                break;
        case VHU_REQ_SET_VRING_ADDR:
                ADD(" index=%u vring_flags=0x%x desc=0x%" PRIx64 " used=0x%" PRIx64 " avail=0x%" PRIx64
                    " log=0x%" PRIx64,
                    p->addr.index, p->addr.flags, p->addr.desc_user_addr, p->addr.used_user_addr,
                    p->addr.avail_user_addr, p->addr.log_guest_addr);
                break;
        case VHU_REQ_SET_VRING_KICK:
        case VHU_REQ_SET_VRING_CALL:
        case VHU_REQ_SET_VRING_ERR:
                ADD(" index=%u nofd=%d", (unsigned) (p->u64 & VHU_VRING_IDX_MASK),
                    (p->u64 & VHU_VRING_NOFD_MASK) ? 1 : 0);
                break;
        case VHU_REQ_SEND_RARP: {
                uint8_t mac[8];
                memcpy(mac, &p->u64, sizeof(mac));
                ADD(" mac=%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
                break;
        }
        case VHU_REQ_NET_SET_MTU:
                ADD(" mtu=%" PRIu64, p->u64);
                break;
        case VHU_REQ_IOTLB_MSG:
                ADD(" iova=0x%" PRIx64 " size=0x%" PRIx64 " uaddr=0x%" PRIx64 " perm=%u type=%u", p->iotlb.iova,
                    p->iotlb.size, p->iotlb.uaddr, p->iotlb.perm, p->iotlb.type);
                break;
        case VHU_REQ_GET_CONFIG:
        case VHU_REQ_SET_CONFIG:
                ADD(" offset=%u config_size=%u config_flags=0x%x", p->config.offset, p->config.size, p->config.flags);
                break;
        case VHU_REQ_CLOSE_CRYPTO_SESSION:
                ADD(" session=%" PRId64, (int64_t) p->u64);
                break;
        case VHU_REQ_GET_INFLIGHT_FD:
        case VHU_REQ_SET_INFLIGHT_FD:
                ADD(" mmap_size=0x%" PRIx64 " mmap_offset=0x%" PRIx64 " num_queues=%u queue_size=%u",
                    p->inflight.mmap_size, p->inflight.mmap_offset, p->inflight.num_queues, p->inflight.queue_size);
                break;
        case VHU_REQ_ADD_MEM_REG:
        case VHU_REQ_REM_MEM_REG:
                ADD(" gpa=0x%" PRIx64 " size=0x%" PRIx64 " uaddr=0x%" PRIx64 " offset=0x%" PRIx64,
                    p->mem_reg.region.guest_phys_addr, p->mem_reg.region.memory_size, p->mem_reg.region.userspace_addr,
                    p->mem_reg.region.mmap_offset);
                break;
        case VHU_REQ_SET_STATUS:
                ADD(" status=0x%" PRIx64, p->u64);
                break;
        case VHU_REQ_GET_SHARED_OBJECT:
                ADD(" uuid=");
                for (unsigned i = 0; i < sizeof(p->object.uuid); i++)
                        ADD("%02x", p->object.uuid[i]);
                break;
        case VHU_REQ_SET_DEVICE_STATE_FD:
                ADD(" direction=%u phase=%u", p->device_state.direction, p->device_state.phase);
                break;
        default:
                break;
        }
#undef ADD
}

static void record_message(struct tb_conn *c, const struct vhu_msg *m, bool with_fields) {
        char fields[1024] = "";
        if (with_fields)
                describe(m, fields, sizeof(fields));
        tb_record(c->srv, "%s flags=0x%x size=%u fds=%u%s", vhu_request_name(m->hdr.request), m->hdr.flags, m->hdr.size,
                  m->nfds, fields);
}

/* ---------------------------------------------------------------- raw replies */

/* Sends header, `len` payload bytes (whatever hdr->size claims) and fds. */
static int send_raw(struct tb_conn *c, const struct vhu_hdr *hdr, const void *payload, size_t len, const int *fds,
                    unsigned nfds) {
        size_t total = sizeof(*hdr) + len;
        char *buf = malloc(total);
        if (!buf)
                return -ENOMEM;
        memcpy(buf, hdr, sizeof(*hdr));
        if (len)
                memcpy(buf + sizeof(*hdr), payload, len);

        union {
                char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
                struct cmsghdr align;
        } control;
        size_t sent = 0;
        int r = 0;
        uint64_t deadline = vhu_deadline_after_ms(c->cfg->io_timeout_ms);
        while (sent < total) {
                struct iovec iov = { .iov_base = buf + sent, .iov_len = total - sent };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
                if (sent == 0 && nfds > 0) {
                        memset(&control, 0, sizeof(control));
                        mh.msg_control = control.buf;
                        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
                        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
                        cm->cmsg_level = SOL_SOCKET;
                        cm->cmsg_type = SCM_RIGHTS;
                        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
                        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
                }
                ssize_t n = sendmsg(c->sock, &mh, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                r = vhu_wait_poll(NULL, c->sock, POLLOUT, deadline);
                                if (r < 0)
                                        break;
                                continue;
                        }
                        r = -errno;
                        break;
                }
                sent += (size_t) n;
        }
        free(buf);
        return r;
}

/* ---------------------------------------------------------------- faults */

static const struct tb_fault *fault_for(struct tb_conn *c, uint32_t request) {
        struct tb_server *srv = c->srv;
        unsigned count = ++srv->counts[request];
        for (unsigned i = 0; i < c->cfg->nfaults; i++) {
                const struct tb_fault *f = &c->cfg->faults[i];
                unsigned nth = f->nth ? f->nth : 1;
                if (!srv->fired[i] && f->request == request && nth == count) {
                        srv->fired[i] = true;
                        return f;
                }
        }
        return NULL;
}

/* Replies whose body is a status take the refusal there; others come back empty-handed. */
static void build_nack(const struct vhu_request_info *info, const struct tb_fault *f, const struct vhu_msg *m,
                       struct vhu_msg *reply) {
        uint64_t status = f->has_value ? f->value : 1;
        if (info->reply != VHU_REPLY_ALWAYS) {
                set_u64(reply, status);
                return;
        }
        switch (info->request) {
        case VHU_REQ_SET_DEVICE_STATE_FD:
                set_u64(reply, VHU_DEVICE_STATE_NOFD_MASK | ((status & VHU_DEVICE_STATE_ERR_MASK) ? status & 0xff : 1));
                break;
        case VHU_REQ_CHECK_DEVICE_STATE:
        case VHU_REQ_GET_SHARED_OBJECT:
        case VHU_REQ_POSTCOPY_ADVISE:
                set_u64(reply, status);
                break;
        case VHU_REQ_CREATE_CRYPTO_SESSION:
                memcpy(&reply->payload.crypto, &m->payload.crypto, m->hdr.size);
                reply->payload.crypto.session_id = -1;
                reply->hdr.size = m->hdr.size;
                break;
        case VHU_REQ_GET_CONFIG:
                reply->payload.config.offset = m->payload.config.offset;
                reply->hdr.size = VHU_CONFIG_HDR_SIZE;
                break;
        case VHU_REQ_GET_VRING_BASE:
                reply->payload.state.index = m->payload.state.index;
                reply->hdr.size = sizeof(struct vhu_vring_state);
                break;
        default:
                /* GET_FEATURES and friends: zeros of the expected size. */
                reply->hdr.size = info->reply_size.min ? info->reply_size.min : sizeof(uint64_t);
                break;
        }
}

static int open_devnull(void) {
        return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* One /dev/null more on an outgoing message (fds_on_every_message); false when none could be opened. */
static bool add_extra_fd(struct tb_conn *c, struct vhu_msg *msg) {
        if (!c->cfg->fds_on_every_message || msg->nfds >= VHU_MAX_FDS)
                return true;
        int fd = open_devnull();
        if (fd < 0)
                return false;
        msg->fds[msg->nfds++] = fd;
        return true;
}

/* Sends `reply` bent as the fault says.  `ack` is true when it is a plain u64 status. */
static int send_faulty(struct tb_conn *c, const struct vhu_request_info *info, const struct tb_fault *f,
                       struct vhu_msg *reply, bool ack) {
        struct vhu_hdr hdr = reply->hdr;
        size_t len = hdr.size;
        int r;

        switch (f->kind) {
        case TB_FAULT_BAD_FLAGS:
                hdr.flags = f->has_value ? (uint32_t) f->value : (VHU_REPLY_FLAGS | VHU_FLAG_NEED_REPLY);
                break;
        case TB_FAULT_OVERSIZE:
                hdr.size = (ack ? sizeof(uint64_t) : info->reply_size.max) + sizeof(uint64_t);
                len = hdr.size;
                break;
        case TB_FAULT_UNDERSIZE:
                hdr.size = hdr.size > 0 ? hdr.size - 1 : 4;
                len = hdr.size;
                break;
        case TB_FAULT_WRONG_REQUEST:
                hdr.request = f->has_value ? (uint32_t) f->value : hdr.request % (VHU_REQ_MAX - 1) + 1;
                break;
        case TB_FAULT_EXTRA_FDS: {
                unsigned allowed = ack ? 0 : info->reply_fds_max;
                unsigned extra = f->has_value && f->value > 0 ? (unsigned) f->value : 1;
                unsigned want = allowed + extra;
                if (want > VHU_MAX_FDS)
                        want = VHU_MAX_FDS;
                while (reply->nfds < want) {
                        int fd = open_devnull();
                        if (fd < 0)
                                break;
                        reply->fds[reply->nfds++] = fd;
                }
                break;
        }
        case TB_FAULT_GARBAGE:
                hdr.size = UINT32_MAX;
                len = sizeof(uint64_t);
                break;
        default:
                break;
        }

        /* The payload union is the largest legal body; an oversize reply runs past it. */
        if (len <= sizeof(reply->payload))
                return send_raw(c, &hdr, &reply->payload, len, reply->fds, reply->nfds);
        char *big = calloc(1, len);
        if (!big)
                return -ENOMEM;
        memcpy(big, &reply->payload, sizeof(reply->payload));
        r = send_raw(c, &hdr, big, len, reply->fds, reply->nfds);
        free(big);
        return r;
}

/* Waits until the front-end hangs up, never reading what it sends. */
static void hang(struct tb_conn *c) {
        for (;;) {
                struct pollfd p = { .fd = c->sock, .events = POLLRDHUP };
                int r = poll(&p, 1, -1);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0 || (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
                        return;
        }
}

/* ---------------------------------------------------------------- faults on the back-end channel */

/* Messages per buffer the flood writes over and over. */
#define FLOOD_BATCH 1024u

/*
 * The request a flood (or a half header) is made of: one the front-end must
 * accept without a reply, by the features negotiated.  Its wire bytes go to
 * buf (which holds a header and an IOTLB message); returns their length.
 */
static size_t channel_noise(const struct tb_conn *c, uint32_t *request, uint8_t *buf) {
        struct vhu_hdr hdr = { .flags = VHU_VERSION };
        struct vhu_iotlb miss = { .iova = 0x1000, .size = 0x1000, .perm = VHU_ACCESS_RW, .type = VHU_IOTLB_MISS };
        if (has_pf(c, VHU_PF_CONFIG)) {
                hdr.request = VHU_BREQ_CONFIG_CHANGE_MSG;
        } else {
                hdr.request = VHU_BREQ_IOTLB_MSG;
                hdr.size = sizeof(miss);
        }
        *request = hdr.request;
        memcpy(buf, &hdr, sizeof(hdr));
        memcpy(buf + sizeof(hdr), &miss, hdr.size);
        return sizeof(hdr) + hdr.size;
}

/* One non-blocking write of len bytes, with fd (>= 0) attached: bytes written or -errno. */
static ssize_t send_some(int sock, const void *data, size_t len, int fd) {
        union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
        } control;
        struct iovec iov = { .iov_base = (void *) data, .iov_len = len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        if (fd >= 0) {
                memset(&control, 0, sizeof(control));
                mh.msg_control = control.buf;
                mh.msg_controllen = sizeof(control.buf);
                struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cm), &fd, sizeof(int));
        }
        ssize_t n;
        do
                n = sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        return n < 0 ? -errno : n;
}

/*
 * Writes the flood until the channel fails or the front-end hangs up; says
 * which in *why.  Returns the number of whole messages written.
 */
static uint64_t flood(struct tb_conn *c, const uint8_t *buf, size_t msg_len, int extra_fd, char *why, size_t whylen) {
        size_t len = (size_t) FLOOD_BATCH * msg_len;
        uint64_t sent = 0;
        for (;;) {
                struct pollfd p[2] = {
                        { .fd = c->sock, .events = POLLRDHUP },
                        { .fd = c->backend_fd, .events = POLLOUT },
                };
                int r = poll(p, 2, -1);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0 || (p[0].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) {
                        snprintf(why, whylen, "front-end hung up");
                        break;
                }
                if (!p[1].revents)
                        continue;
                /* With an fd on every message, one message (or its rest) per write. */
                size_t off = (size_t) (sent % len);
                size_t in_msg = off % msg_len;
                size_t chunk = extra_fd >= 0 ? msg_len - in_msg : len - off;
                ssize_t n = send_some(c->backend_fd, buf + off, chunk, in_msg == 0 ? extra_fd : -1);
                if (n == -EAGAIN)
                        continue;
                if (n < 0) {
                        snprintf(why, whylen, "channel write failed: %s", strerror((int) -n));
                        break;
                }
                sent += (uint64_t) n;
        }
        return sent / msg_len;
}

/* Floods until the channel fails or the front-end hangs up; false when it could not start. */
static bool flood_until_stopped(struct tb_conn *c) {
        uint8_t one[sizeof(struct vhu_hdr) + sizeof(struct vhu_iotlb)];
        uint32_t request;
        char why[128];

        if (c->backend_fd < 0) {
                tb_record(c->srv, "BACKEND_SKIPPED flood-channel no back-end channel");
                return false;
        }
        size_t msg_len = channel_noise(c, &request, one);
        uint8_t *buf = malloc((size_t) FLOOD_BATCH * msg_len);
        if (!buf) {
                tb_record(c->srv, "BACKEND_SKIPPED flood-channel out of memory");
                return false;
        }
        for (unsigned i = 0; i < FLOOD_BATCH; i++)
                memcpy(buf + (size_t) i * msg_len, one, msg_len);
        int extra_fd = c->cfg->fds_on_every_message ? open_devnull() : -1;
        uint64_t sent = flood(c, buf, msg_len, extra_fd, why, sizeof(why));
        if (extra_fd >= 0)
                close(extra_fd);
        free(buf);
        tb_record(c->srv, "BACKEND_FLOOD %s sent=%" PRIu64 " %s", vhu_backend_request_name(request), sent, why);
        return true;
}

static void flood_channel(struct tb_conn *c) {
        (void) flood_until_stopped(c);
        /* The reply stays withheld until the front-end gives up on us. */
        hang(c);
}

/*
 * flood-channel=1: the trigger was answered; flood while the device runs,
 * then go on serving requests without the channel the front-end closed.
 */
static void flood_channel_after_reply(struct tb_conn *c) {
        if (!flood_until_stopped(c) || c->backend_fd < 0)
                return;
        close(c->backend_fd);
        c->backend_fd = -1;
}

static void channel_half_header(struct tb_conn *c) {
        uint8_t one[sizeof(struct vhu_hdr) + sizeof(struct vhu_iotlb)];
        uint32_t request;
        const size_t half = sizeof(struct vhu_hdr) / 2;

        if (c->backend_fd < 0) {
                tb_record(c->srv, "BACKEND_SKIPPED channel-half-header no back-end channel");
                hang(c);
                return;
        }
        channel_noise(c, &request, one);
        int extra_fd = c->cfg->fds_on_every_message ? open_devnull() : -1;
        ssize_t n = send_some(c->backend_fd, one, half, extra_fd);
        if (extra_fd >= 0)
                close(extra_fd);
        if (n == (ssize_t) half)
                tb_record(c->srv, "BACKEND_HALF_HEADER %s %zu bytes", vhu_backend_request_name(request), half);
        else
                tb_record(c->srv, "BACKEND_SKIPPED channel-half-header send failed: %s",
                          n < 0 ? strerror((int) -n) : "short write");
        /* The channel stays open, mid-message, and the reply withheld. */
        hang(c);
}

/* ---------------------------------------------------------------- truncate-memory */

static void truncate_memory(struct tb_conn *c) {
        unsigned n = 0;
        for (unsigned i = 0; i < c->nslots; i++) {
                const struct tb_region *reg = &c->regions[i];
                if (!reg->used || reg->fd < 0)
                        continue;
                n++;
                int r = ftruncate(reg->fd, 0);
                tb_record(c->srv, "TRUNCATED gpa=0x%" PRIx64 " size=0x%" PRIx64 " %s", reg->r.guest_phys_addr,
                          reg->r.memory_size, r == 0 ? "ok" : strerror(errno));
        }
        if (n == 0)
                tb_record(c->srv, "TRUNCATED none: no guest memory received");
}

/* ---------------------------------------------------------------- back-end channel */

static void read_backend_reply(struct tb_conn *c) {
        struct vhu_msg m;
        uint64_t deadline = vhu_deadline_after_ms(c->cfg->io_timeout_ms);
        int r = vhu_recv_hdr(c->backend_fd, &m, NULL, deadline);
        if (r == -ECONNRESET) {
                close_backend_channel(c, true);
                return;
        }
        if (r < 0 || m.hdr.size > sizeof(m.payload)) {
                violation(c, "back-end channel: %s", r < 0 ? strerror(-r) : "reply larger than any payload");
                vhu_msg_close_fds(&m);
                close_backend_channel(c, true);
                return;
        }
        memset(&m.payload, 0, sizeof(m.payload));
        r = vhu_recv_payload(c->backend_fd, &m, NULL, deadline);
        if (r < 0) {
                violation(c, "back-end channel: reply payload: %s", strerror(-r));
                close_backend_channel(c, true);
                return;
        }
        if (m.nfds > 0)
                violation(c, "back-end channel: %u fds with a reply", m.nfds);
        vhu_msg_close_fds(&m);
        if (c->npending == 0) {
                violation(c, "back-end channel: unsolicited message request=%u flags=0x%x size=%u", m.hdr.request,
                          m.hdr.flags, m.hdr.size);
                return;
        }
        uint32_t expect = c->pending[0];
        memmove(c->pending, c->pending + 1, (c->npending - 1) * sizeof(c->pending[0]));
        c->npending--;
        char name[32];
        snprintf(name, sizeof(name), "%s", vhu_backend_request_name(expect));
        if (m.hdr.flags != VHU_REPLY_FLAGS)
                violation(c, "back-end channel: reply to %s has flags 0x%x", name, m.hdr.flags);
        if (m.hdr.request != expect)
                violation(c, "back-end channel: reply to %s names request %u", name, m.hdr.request);
        if (m.hdr.size != sizeof(uint64_t)) {
                violation(c, "back-end channel: reply to %s has %u bytes", name, m.hdr.size);
                tb_record(c->srv, "BACKEND_REPLY %s invalid", name);
                return;
        }
        tb_record(c->srv, "BACKEND_REPLY %s %" PRIu64, name, m.payload.u64);
}

static void send_backend_req(struct tb_conn *c, const struct tb_backend_req *b) {
        struct vhu_msg m;
        char name[32];
        snprintf(name, sizeof(name), "%s", vhu_backend_request_name(b->request));

        if (c->backend_fd < 0) {
                tb_record(c->srv, "BACKEND_SKIPPED %s no back-end channel", name);
                return;
        }
        if (b->need_reply && c->npending >= TB_PENDING) {
                tb_record(c->srv, "BACKEND_SKIPPED %s too many replies outstanding", name);
                return;
        }
        memset(&m, 0, sizeof(m));
        m.hdr.request = b->request;
        m.hdr.flags = VHU_VERSION | (b->need_reply ? VHU_FLAG_NEED_REPLY : 0);
        switch (b->request) {
        case VHU_BREQ_IOTLB_MSG:
                m.payload.iotlb = (struct vhu_iotlb){
                        .iova = 0x1000, .size = 0x1000, .perm = VHU_ACCESS_RW, .type = VHU_IOTLB_MISS
                };
                m.hdr.size = sizeof(m.payload.iotlb);
                break;
        case VHU_BREQ_CONFIG_CHANGE_MSG:
                break;
        case VHU_BREQ_VRING_HOST_NOTIFIER_MSG: {
                int fd = memfd_create("tb-host-notifier", MFD_CLOEXEC);
                if (fd < 0 || ftruncate(fd, PAGE_SIZE_4K) < 0) {
                        if (fd >= 0)
                                close(fd);
                        tb_record(c->srv, "BACKEND_SKIPPED %s no memfd", name);
                        return;
                }
                m.payload.area = (struct vhu_vring_area){ .u64 = b->index, .size = PAGE_SIZE_4K, .offset = 0 };
                m.hdr.size = sizeof(m.payload.area);
                m.fds[0] = fd;
                m.nfds = 1;
                break;
        }
        case VHU_BREQ_VRING_CALL:
        case VHU_BREQ_VRING_ERR:
                m.payload.state = (struct vhu_vring_state){ .index = b->index, .num = 0 };
                m.hdr.size = sizeof(m.payload.state);
                break;
        case VHU_BREQ_SHARED_OBJECT_ADD:
        case VHU_BREQ_SHARED_OBJECT_REMOVE:
        case VHU_BREQ_SHARED_OBJECT_LOOKUP:
                for (unsigned i = 0; i < sizeof(m.payload.object.uuid); i++)
                        m.payload.object.uuid[i] = (uint8_t) (i + 1);
                m.hdr.size = sizeof(m.payload.object);
                break;
        default:
                /* A number the front-end cannot know: a u64 of zero. */
                m.hdr.size = sizeof(uint64_t);
                break;
        }
        if (!add_extra_fd(c, &m))
                violation(c, "%s: back-end could not open /dev/null for its extra fd", name);
        unsigned nfds = m.nfds;
        int r = vhu_send_msg(c->backend_fd, &m, NULL, vhu_deadline_after_ms(c->cfg->io_timeout_ms));
        vhu_msg_close_fds(&m);
        if (r < 0) {
                tb_record(c->srv, "BACKEND_SKIPPED %s send failed: %s", name, strerror(-r));
                close_backend_channel(c, true);
                return;
        }
        tb_record(c->srv, "BACKEND_SENT %s flags=0x%x size=%u fds=%u", name, m.hdr.flags, m.hdr.size, nfds);
        if (!b->need_reply)
                return;
        c->pending[c->npending++] = b->request;
        if (b->timing != TB_BACKEND_BEFORE_REPLY)
                return;

        /* Block, as back-ends that wait for their own request do. */
        uint64_t deadline = vhu_deadline_after_ms(c->cfg->io_timeout_ms);
        while (c->npending > 0 && c->backend_fd >= 0) {
                r = vhu_wait_poll(NULL, c->backend_fd, POLLIN, deadline);
                if (r == -ETIMEDOUT) {
                        tb_record(c->srv, "BACKEND_REPLY %s timeout", name);
                        c->npending = 0;
                        return;
                }
                if (r < 0) {
                        close_backend_channel(c, true);
                        return;
                }
                read_backend_reply(c);
        }
}

static void run_backend_reqs(struct tb_conn *c, uint32_t request, enum tb_backend_timing timing) {
        for (unsigned i = 0; i < c->cfg->nbackend_reqs; i++) {
                const struct tb_backend_req *b = &c->cfg->backend_reqs[i];
                uint32_t trigger = b->after ? b->after : VHU_REQ_SET_OWNER;
                if (c->breq_done[i] || trigger != request || b->timing != timing)
                        continue;
                c->breq_done[i] = true;
                send_backend_req(c, b);
        }
}

/* ---------------------------------------------------------------- one message */

static void check_rules(struct tb_conn *c, const struct vhu_request_info *info, const struct vhu_msg *m) {
        uint32_t flags = m->hdr.flags;
        if ((flags & VHU_VERSION_MASK) != VHU_VERSION)
                violation(c, "%s: version %u in flags 0x%x", info->name, flags & VHU_VERSION_MASK, flags);
        if (flags & VHU_FLAG_REPLY)
                violation(c, "%s: REPLY flag set on a request (flags 0x%x)", info->name, flags);
        if (flags & ~(uint32_t) (VHU_VERSION_MASK | VHU_FLAG_REPLY | VHU_FLAG_NEED_REPLY))
                violation(c, "%s: unknown flag bits 0x%x", info->name, flags);
        if (m->nfds < info->fds_min || m->nfds > info->fds_max)
                violation(c, "%s: %u fds, expected %u..%u", info->name, m->nfds, info->fds_min, info->fds_max);
        if (info->protocol_feature >= 0 && !has_pf(c, (unsigned) info->protocol_feature))
                violation(c, "%s sent but protocol feature %s was not negotiated", info->name,
                          vhu_protocol_feature_name((unsigned) info->protocol_feature));
        if (info->virtio_feature >= 0 && !(c->offered & VHU_BIT(info->virtio_feature)))
                violation(c, "%s sent but the back-end does not offer %s", info->name,
                          vhu_virtio_feature_name((unsigned) info->virtio_feature));
}

static bool withholding_fault(enum tb_fault_kind kind) {
        return kind == TB_FAULT_FLOOD_CHANNEL || kind == TB_FAULT_CHANNEL_HALF_HEADER ||
               kind == TB_FAULT_TRUNCATE_MEMORY;
}

/*
 * The faults that apply the trigger request (so that SET_BACKEND_REQ_FD or
 * SET_MEM_TABLE can be the trigger of what it sets up) but never answer it.
 */
static void withhold_reply(struct tb_conn *c, enum tb_fault_kind kind, struct vhu_msg *m) {
        struct vhu_msg unused;
        memset(&unused, 0, sizeof(unused));
        handlers[m->hdr.request](c, m, &unused);
        vhu_msg_close_fds(&unused);
        vhu_msg_close_fds(m);
        switch (kind) {
        case TB_FAULT_FLOOD_CHANNEL:
                flood_channel(c);
                c->end_reason = "fault flood-channel, then peer closed";
                break;
        case TB_FAULT_CHANNEL_HALF_HEADER:
                channel_half_header(c);
                c->end_reason = "fault channel-half-header, then peer closed";
                break;
        default:
                truncate_memory(c);
                c->end_reason = "fault truncate-memory";
                break;
        }
}

/* notify: the test hears of the request (SIGUSR1) and has `value` ms to act before the answer. */
static void notify_parent(const struct tb_fault *f) {
        (void) kill(getppid(), SIGUSR1);
        uint64_t ms = f->has_value ? f->value : 200;
        struct timespec ts = { .tv_sec = (time_t) (ms / 1000u), .tv_nsec = (long) (ms % 1000u) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Returns false when the connection must end (c->end_reason says why). */
static bool serve_message(struct tb_conn *c) {
        struct vhu_msg m;
        struct vhu_msg reply;
        uint64_t deadline = vhu_deadline_after_ms(c->cfg->io_timeout_ms);

        int r = vhu_recv_hdr(c->sock, &m, NULL, deadline);
        if (r == -ECONNRESET) {
                c->end_reason = "peer closed";
                return false;
        }
        if (r < 0) {
                violation(c, "receiving a header: %s", strerror(-r));
                c->end_reason = "receive error";
                return false;
        }
        const struct vhu_request_info *info = vhu_request_info(m.hdr.request);
        if (!info) {
                record_message(c, &m, false);
                violation(c, "unknown request %u: closing the connection", m.hdr.request);
                vhu_msg_close_fds(&m);
                c->end_reason = "unknown request";
                return false;
        }
        if (m.hdr.size > sizeof(m.payload) || !vhu_size_allowed(&info->size, m.hdr.size)) {
                record_message(c, &m, false);
                violation(c, "%s: payload size %u not allowed: closing the connection", info->name, m.hdr.size);
                vhu_msg_close_fds(&m);
                c->end_reason = "bad size";
                return false;
        }
        memset(&m.payload, 0, sizeof(m.payload));
        r = vhu_recv_payload(c->sock, &m, NULL, deadline);
        if (r < 0) {
                record_message(c, &m, false);
                violation(c, "%s: receiving %u payload bytes: %s", info->name, m.hdr.size, strerror(-r));
                c->end_reason = "receive error";
                return false;
        }
        record_message(c, &m, true);

        const struct tb_fault *fault = fault_for(c, m.hdr.request);
        if (fault)
                tb_record(c->srv, "FAULT %s %s", tb_fault_kind_name(fault->kind), info->name);
        check_rules(c, info, &m);

        if (fault && fault->kind == TB_FAULT_DIE)
                _exit(fault->has_value ? (int) fault->value : 1); /* the record line is already flushed */
        if (fault && fault->kind == TB_FAULT_NOTIFY) {
                notify_parent(fault);
                fault = NULL; /* answered as usual */
        }
        if (fault && fault->kind == TB_FAULT_CLOSE) {
                vhu_msg_close_fds(&m);
                c->end_reason = "fault close";
                return false;
        }
        if (fault && fault->kind == TB_FAULT_HANG) {
                vhu_msg_close_fds(&m);
                hang(c);
                c->end_reason = "fault hang, then peer closed";
                return false;
        }
        /* flood-channel=1 answers the trigger as usual and floods afterwards. */
        bool flood_after_reply = fault && fault->kind == TB_FAULT_FLOOD_CHANNEL && fault->has_value &&
                                 fault->value == 1;
        if (flood_after_reply)
                fault = NULL;
        if (fault && withholding_fault(fault->kind)) {
                withhold_reply(c, fault->kind, &m);
                return false;
        }

        bool need_reply = m.hdr.flags & VHU_FLAG_NEED_REPLY;
        bool has_body = info->reply == VHU_REPLY_ALWAYS || info->reply == VHU_REPLY_STATUS_ALWAYS ||
                        (info->reply == VHU_REPLY_IF_LOG_SHMFD && has_pf(c, VHU_PF_LOG_SHMFD));
        uint64_t status = 0;

        memset(&reply.hdr, 0, sizeof(reply.hdr));
        memset(&reply.payload, 0, sizeof(reply.payload));
        reply.hdr.request = m.hdr.request;
        reply.hdr.flags = VHU_REPLY_FLAGS;
        reply.nfds = 0;

        if (fault && fault->kind == TB_FAULT_NACK) {
                /* A refusal changes nothing. */
                build_nack(info, fault, &m, &reply);
                has_body = true;
        } else {
                status = handlers[m.hdr.request](c, &m, &reply);
                if (!has_body)
                        reply.hdr.size = 0;
        }
        vhu_msg_close_fds(&m);

        /* REPLY_ACK: evaluated after the request, so SET_PROTOCOL_FEATURES may ask for it. */
        bool ack = false;
        if (!has_body && need_reply) {
                if (has_pf(c, VHU_PF_REPLY_ACK))
                        ack = true;
                else
                        violation(c, "%s: NEED_REPLY without REPLY_ACK negotiated", info->name);
        }
        /* A fault that bends the reply sends one even where none is due. */
        if (!has_body && fault)
                ack = true;
        if (ack)
                set_u64(&reply, status);

        run_backend_reqs(c, m.hdr.request, TB_BACKEND_BEFORE_REPLY);

        r = 0;
        if ((fault || has_body || ack) && !add_extra_fd(c, &reply))
                violation(c, "%s: back-end could not open /dev/null for its extra fd", info->name);
        if (fault)
                r = send_faulty(c, info, fault, &reply, ack);
        else if (has_body || ack)
                r = vhu_send_msg(c->sock, &reply, NULL, vhu_deadline_after_ms(c->cfg->io_timeout_ms));
        vhu_msg_close_fds(&reply);
        if (r < 0) {
                c->end_reason = "send failed";
                return false;
        }

        run_backend_reqs(c, m.hdr.request, TB_BACKEND_AFTER_REPLY);
        if (flood_after_reply)
                flood_channel_after_reply(c);
        return true;
}

static void serve_conn(struct tb_conn *c) {
        tb_record(c->srv, "CONNECTION %u OPEN", c->id);
        for (;;) {
                struct pollfd p[2] = {
                        { .fd = c->sock, .events = POLLIN },
                        { .fd = c->backend_fd, .events = POLLIN },
                };
                nfds_t n = c->backend_fd >= 0 ? 2 : 1;
                int r = poll(p, n, -1);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0) {
                        c->end_reason = "poll failed";
                        break;
                }
                /* The channel first: a reply there precedes the request that follows it. */
                if (n == 2 && p[1].revents) {
                        read_backend_reply(c);
                        continue;
                }
                if (p[0].revents && !serve_message(c))
                        break;
        }
        tb_record(c->srv, "CONNECTION %u CLOSED %s", c->id, c->end_reason ? c->end_reason : "");
}

/* ---------------------------------------------------------------- server */

int tb_server_init(struct tb_server *srv, const struct tb_config *cfg) {
        memset(srv, 0, sizeof(*srv));
        srv->cfg = cfg;
        if (tb_config_check(cfg, NULL) < 0)
                return -EINVAL;
        if (cfg->device_state_size) {
                srv->state = malloc(cfg->device_state_size);
                if (!srv->state)
                        return -ENOMEM;
                srv->state_len = cfg->device_state_size;
                tb_device_state_fill(cfg->device_state_seed, srv->state, srv->state_len);
        }
        if (cfg->record_path) {
                srv->rec = fopen(cfg->record_path, "ae");
                if (!srv->rec) {
                        int r = -errno;
                        free(srv->state);
                        srv->state = NULL;
                        return r;
                }
        }
        return 0;
}

void tb_server_fini(struct tb_server *srv) {
        free(srv->state);
        srv->state = NULL;
        srv->state_len = 0;
        if (srv->rec)
                fclose(srv->rec);
        srv->rec = NULL;
}

void tb_server_serve(struct tb_server *srv, int fd) {
        struct tb_conn *c = calloc(1, sizeof(*c));
        if (!c || vhu_fd_prepare(fd) < 0 || conn_init(c, srv, fd) < 0) {
                if (c)
                        free(c->regions);
                free(c);
                close(fd);
                return;
        }
        serve_conn(c);
        conn_fini(c);
        free(c);
}

int tb_serve_fd(const struct tb_config *cfg, int fd) {
        struct tb_server srv;
        int r = tb_server_init(&srv, cfg);
        if (r < 0) {
                close(fd);
                return r;
        }
        tb_server_serve(&srv, fd);
        tb_server_fini(&srv);
        return 0;
}
