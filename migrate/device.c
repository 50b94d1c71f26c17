/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrate/device.h"
#include "proto/vhost-user-frontend.h"
#include "proto/vhost-user-table.h"

/* virtio device status bits (virtio 1.x, 2.1). */
#define STATUS_ACKNOWLEDGE 0x1u
#define STATUS_DRIVER      0x2u
#define STATUS_DRIVER_OK   0x4u
#define STATUS_FEATURES_OK 0x8u

#define RECONNECT_DELAY_MIN_MS 50u
#define RECONNECT_DELAY_MAX_MS 5000u

struct vhm_device {
        struct vhm_vm *vm;
        struct vhm_device_config cfg;
        char *socket;

        struct vhu_conn *conn;
        int listen_fd;
        struct vhu_socket_file listen_file; /* the socket file we created, to remove only that */
        uid_t *allowed_uids;                /* the config's list, copied */
        uid_t backend_uid;                  /* of the first connection; (uid_t) -1 before */
        enum vhm_device_state state;
        bool resume_after_reconnect; /* the rings were meant to run when the back-end left */
        bool stop_complete;          /* every ring's index came from GET_VRING_BASE */
        uint64_t memory_generation;  /* of the VM's layout last sent as the memory table */

        struct vhm_queue_spec queues[VHM_DEVICE_MAX_QUEUES];
        uint32_t queues_set; /* bit per queue index */
        unsigned last_avail[VHM_DEVICE_MAX_QUEUES];
        uint64_t acked_features;
        /* Remembered across a reconnect, when the connection is gone. */
        uint64_t features_offered, protocol_features, protocol_features_offered;

        /* The VM's dirty log, as given; log_sent: SET_LOG_BASE done on this connection. */
        int log_fd;
        uint64_t log_size;
        bool log_sent;
        bool logging;
        bool ever_connected;
        bool awaiting_restore; /* incoming: the rings start only from a migrated state */
        bool released;         /* migrated away: never connects again */

        unsigned reconnect_delay_ms;
        struct vhm_device_stats stats;
        uint64_t requests_closed, request_failures_closed; /* of connections already closed */
        uint32_t error_request;
        char error[384];
};

/* ---- errors and state ---------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int dev_fail(struct vhm_device *dev, int err, const char *fmt, ...) {
        dev->error_request = VHU_REQ_NONE;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(dev->error, sizeof(dev->error), fmt, ap);
        va_end(ap);
        return err;
}

/* The request counters outlive each connection: what a closed one sent is kept. */
static void free_conn(struct vhm_device *dev) {
        dev->requests_closed += vhu_conn_requests(dev->conn);
        dev->request_failures_closed += vhu_conn_request_failures(dev->conn);
        vhu_conn_free(dev->conn);
        dev->conn = NULL;
}

static void drop_connection(struct vhm_device *dev) {
        if (!dev->conn)
                return;
        free_conn(dev);
        dev->stats.disconnects++;
        dev->state = VHM_DEVICE_DISCONNECTED;
}

/*
 * A request failed.  A connection the protocol layer closed (violation, hang,
 * back-end gone) makes the device DISCONNECTED, so it can be reconnected; a
 * refusal with the link intact leaves it FAILED.
 */
static int request_failed(struct vhm_device *dev, int err, const char *step) {
        /* The connection's message already starts with the request's name. */
        (void) step;
        dev_fail(dev, err, "%s: %s", dev->socket, vhu_conn_error(dev->conn));
        dev->error_request = vhu_conn_last_request(dev->conn);
        if (!vhu_conn_is_connected(dev->conn))
                drop_connection(dev);
        else
                dev->state = VHM_DEVICE_FAILED;
        return err;
}

#define TRY(dev, step, call)                                      \
        do {                                                      \
                int r_ = (call);                                  \
                if (r_ < 0)                                       \
                        return request_failed((dev), r_, (step)); \
        } while (0)

const char *vhm_device_state_name(enum vhm_device_state s) {
        switch (s) {
        case VHM_DEVICE_DISCONNECTED:
                return "disconnected";
        case VHM_DEVICE_READY:
                return "ready";
        case VHM_DEVICE_RUNNING:
                return "running";
        case VHM_DEVICE_STOPPED:
                return "stopped";
        case VHM_DEVICE_FAILED:
                return "failed";
        }
        return "unknown";
}

/* ---- lifecycle of the object --------------------------------------------- */

static bool valid_config(const struct vhm_device_config *cfg) {
        return cfg && cfg->socket && *cfg->socket && cfg->queue_pairs >= 1 &&
               cfg->queue_pairs <= VHM_DEVICE_MAX_QUEUE_PAIRS && (cfg->allowed_uids || !cfg->n_allowed_uids) &&
               (unsigned) cfg->type < VHM_DEVICE_TYPE_MAX;
}

int vhm_device_new(struct vhm_vm *vm, const struct vhm_device_config *cfg, struct vhm_device **out) {
        if (!vm || !valid_config(cfg))
                return -EINVAL;
        struct vhm_device *dev = calloc(1, sizeof(*dev));
        if (!dev)
                return -ENOMEM;
        dev->socket = strdup(cfg->socket);
        if (cfg->n_allowed_uids)
                dev->allowed_uids = calloc(cfg->n_allowed_uids, sizeof(uid_t));
        if (!dev->socket || (cfg->n_allowed_uids && !dev->allowed_uids)) {
                free(dev->socket);
                free(dev);
                return -ENOMEM;
        }
        if (cfg->n_allowed_uids)
                memcpy(dev->allowed_uids, cfg->allowed_uids, cfg->n_allowed_uids * sizeof(uid_t));
        dev->vm = vm;
        dev->cfg = *cfg;
        dev->cfg.socket = dev->socket;
        dev->cfg.allowed_uids = dev->allowed_uids;
        dev->backend_uid = (uid_t) -1;
        dev->listen_fd = -1;
        dev->log_fd = -1;
        dev->reconnect_delay_ms = RECONNECT_DELAY_MIN_MS;
        dev->awaiting_restore = cfg->incoming;
        for (unsigned q = 0; q < VHM_DEVICE_MAX_QUEUES; q++)
                dev->queues[q].kick_fd = dev->queues[q].call_fd = -1;
        *out = dev;
        return 0;
}

static void close_queue_fds(struct vhm_queue_spec *q) {
        if (q->kick_fd >= 0)
                close(q->kick_fd);
        if (q->call_fd >= 0)
                close(q->call_fd);
        q->kick_fd = q->call_fd = -1;
}

void vhm_device_free(struct vhm_device *dev) {
        if (!dev)
                return;
        if (dev->state == VHM_DEVICE_RUNNING)
                (void) vhm_device_stop(dev);
        drop_connection(dev);
        if (dev->listen_fd >= 0) {
                close(dev->listen_fd);
                /* Somebody may have put another file there since: only our socket goes. */
                (void) vhu_socket_unlink_if_same(dev->socket, &dev->listen_file);
        }
        for (unsigned q = 0; q < VHM_DEVICE_MAX_QUEUES; q++)
                close_queue_fds(&dev->queues[q]);
        if (dev->log_fd >= 0)
                close(dev->log_fd);
        free(dev->allowed_uids);
        free(dev->socket);
        free(dev);
}

static unsigned queue_count(const struct vhm_device *dev) {
        return 2 * dev->cfg.queue_pairs;
}

/* Split-ring sizes (virtio 1.x 2.7): where each part ends tells whether it fits guest memory. */
static uint64_t desc_bytes(unsigned n) {
        return 16ull * n;
}
static uint64_t avail_bytes(unsigned n) {
        return 6ull + 2ull * n;
}
static uint64_t used_bytes(unsigned n) {
        return 6ull + 8ull * n;
}

static bool is_power_of_two(unsigned v) {
        return v && !(v & (v - 1));
}

/* Split-ring alignment (virtio 1.x 2.7): the back-end and our index loads rely on it. */
static int check_alignment(struct vhm_device *dev, unsigned index, const struct vhm_queue_spec *spec) {
        static const struct {
                const char *part;
                uint64_t align;
        } parts[] = {
                { "descriptor table", 16 },
                { "avail ring", 2 },
                { "used ring", 4 },
        };
        const uint64_t gpa[] = { spec->desc_gpa, spec->avail_gpa, spec->used_gpa };
        for (unsigned i = 0; i < 3; i++)
                if (gpa[i] % parts[i].align)
                        return dev_fail(dev, -EINVAL,
                                        "%s: queue %u: %s at 0x%" PRIx64 " is not %" PRIu64 "-byte aligned",
                                        dev->socket, index, parts[i].part, gpa[i], parts[i].align);
        return 0;
}

int vhm_device_set_queue(struct vhm_device *dev, unsigned index, const struct vhm_queue_spec *spec) {
        if (index >= queue_count(dev))
                return dev_fail(dev, -EINVAL, "%s: queue %u: the device has %u queues", dev->socket, index,
                                queue_count(dev));
        if (!is_power_of_two(spec->size) || spec->size > 32768)
                return dev_fail(dev, -EINVAL, "%s: queue %u: size %u is not a power of two up to 32768", dev->socket,
                                index, spec->size);
        if (dev->state == VHM_DEVICE_RUNNING)
                return dev_fail(dev, -EBUSY, "%s: queue %u: stop the device before changing its queues", dev->socket,
                                index);
        int r = check_alignment(dev, index, spec);
        if (r < 0)
                return r;
        if (!vhm_vm_gpa_to_host(dev->vm, spec->desc_gpa, desc_bytes(spec->size)) ||
            !vhm_vm_gpa_to_host(dev->vm, spec->avail_gpa, avail_bytes(spec->size)) ||
            !vhm_vm_gpa_to_host(dev->vm, spec->used_gpa, used_bytes(spec->size)))
                return dev_fail(dev, -EFAULT, "%s: queue %u: ring outside guest memory", dev->socket, index);

        int kick = fcntl(spec->kick_fd, F_DUPFD_CLOEXEC, 3);
        int call = kick < 0 ? -1 : fcntl(spec->call_fd, F_DUPFD_CLOEXEC, 3);
        if (kick < 0 || call < 0) {
                if (kick >= 0)
                        close(kick);
                return dev_fail(dev, -EBADF, "%s: queue %u: invalid kick or call fd", dev->socket, index);
        }
        close_queue_fds(&dev->queues[index]);
        dev->queues[index] = *spec;
        dev->queues[index].kick_fd = kick;
        dev->queues[index].call_fd = call;
        dev->queues_set |= 1u << index;
        dev->last_avail[index] = 0;
        return 0;
}

/* ---- connecting -------------------------------------------------------- */

/*
 * Client mode: who owns the socket file is looked at before connecting (the
 * peer must be its owner, or the owner root).  Server mode: the socket is
 * created with the configured mode and group, once.
 */
static int open_socket(struct vhm_device *dev, unsigned timeout_ms, int *fd, uid_t *file_owner) {
        if (!dev->cfg.server) {
                struct stat st;
                if (lstat(dev->socket, &st) < 0)
                        return -errno;
                *file_owner = st.st_uid;
                *fd = vhu_socket_connect(dev->socket);
                return *fd < 0 ? *fd : 0;
        }
        if (dev->listen_fd < 0) {
                struct vhu_listen_options opts = dev->cfg.listen;
                if (opts.gid == 0)
                        opts.gid = (gid_t) -1;
                dev->listen_fd = vhu_socket_listen_ex(dev->socket, &opts, &dev->listen_file);
                if (dev->listen_fd < 0)
                        return dev->listen_fd;
        }
        *file_owner = 0; /* our own socket */
        *fd = vhu_socket_accept(dev->listen_fd, NULL, vhu_deadline_after_ms(timeout_ms));
        return *fd < 0 ? *fd : 0;
}

/* ---- who the peer is ------------------------------------------------------ */

static bool uid_allowed(const struct vhm_device *dev, uid_t uid) {
        for (unsigned i = 0; i < dev->cfg.n_allowed_uids; i++)
                if (dev->allowed_uids[i] == uid)
                        return true;
        return false;
}

/* Why a peer running as uid may not be the back-end; NULL when it may. */
static const char *peer_refusal(const struct vhm_device *dev, uid_t uid, uid_t file_owner, char *why, size_t len) {
        if (file_owner != 0 && file_owner != uid) {
                snprintf(why, len, "peer uid %u does not own the socket file (owner uid %u, not root)", (unsigned) uid,
                         (unsigned) file_owner);
                return why;
        }
        if (uid == 0)
                return NULL;
        if (dev->cfg.n_allowed_uids) {
                if (uid_allowed(dev, uid))
                        return NULL;
                snprintf(why, len, "peer uid %u is not among the device's allowed uids", (unsigned) uid);
                return why;
        }
        if (dev->backend_uid == (uid_t) -1 || dev->backend_uid == uid)
                return NULL;
        snprintf(why, len, "peer uid %u is not the back-end's uid %u of the first connection", (unsigned) uid,
                 (unsigned) dev->backend_uid);
        return why;
}

/*
 * Before a single request goes out (the first one hands over guest memory
 * soon after): is the peer the back-end?  A refused peer's connection is
 * closed unserved; the device stays DISCONNECTED for the real back-end.
 */
static int check_peer(struct vhm_device *dev, int fd, uid_t file_owner, uid_t *uid) {
        char why[160];
        int r = vhu_socket_peer_cred(fd, uid, NULL, NULL);
        if (r < 0) {
                close(fd);
                return dev_fail(dev, r, "%s: cannot tell who the peer is (SO_PEERCRED): %s", dev->socket, strerror(-r));
        }
        if (!peer_refusal(dev, *uid, file_owner, why, sizeof(why)))
                return 0;
        close(fd);
        dev->stats.refused_peers++;
        dev->state = VHM_DEVICE_DISCONNECTED;
        return dev_fail(dev, -EPERM, "%s: refused the peer: %s", dev->socket, why);
}

static int negotiate(struct vhm_device *dev) {
        int r = vhu_negotiate(dev->conn, NULL);
        if (r < 0) {
                dev_fail(dev, r, "%s: negotiation: %s", dev->socket, vhu_conn_error(dev->conn));
                dev->error_request = vhu_conn_last_request(dev->conn);
                free_conn(dev);
                dev->state = VHM_DEVICE_DISCONNECTED;
                return r;
        }

        unsigned offered_pairs = vhu_conn_queue_num(dev->conn);
        if (dev->cfg.queue_pairs > offered_pairs) {
                drop_connection(dev);
                dev->state = VHM_DEVICE_FAILED;
                return dev_fail(dev, -ENOTSUP, "%s: the device needs %u queue pairs, the back-end offers %u%s",
                                dev->socket, dev->cfg.queue_pairs, offered_pairs, offered_pairs == 1 ? " (no MQ)" : "");
        }
        dev->features_offered = vhu_conn_features(dev->conn);
        dev->protocol_features = vhu_conn_protocol_features(dev->conn);
        dev->protocol_features_offered = vhu_conn_protocol_features_offered(dev->conn);
        dev->stats.connects++;
        dev->ever_connected = true;
        dev->log_sent = false;
        dev->state = VHM_DEVICE_READY;
        return 0;
}

static int connect_once(struct vhm_device *dev, unsigned timeout_ms) {
        if (dev->conn)
                return dev_fail(dev, -EISCONN, "%s: already connected", dev->socket);
        int fd = -1;
        uid_t file_owner = 0, uid;
        int r = open_socket(dev, timeout_ms, &fd, &file_owner);
        if (r < 0) {
                dev->state = VHM_DEVICE_DISCONNECTED;
                return dev_fail(dev, r, "%s: %s: %s", dev->socket, dev->cfg.server ? "accept" : "connect",
                                r == -ETIMEDOUT ? "no back-end connected in time" : strerror(-r));
        }
        r = check_peer(dev, fd, file_owner, &uid);
        if (r < 0)
                return r;
        struct vhu_conn_options opts = { .timeout_ms = dev->cfg.timeout_ms };
        r = vhu_conn_new(fd, &opts, &dev->conn);
        if (r < 0)
                return dev_fail(dev, r, "%s: %s", dev->socket, strerror(-r));
        r = negotiate(dev);
        /* The first back-end that negotiated is who may come back (root aside). */
        if (r == 0 && dev->backend_uid == (uid_t) -1)
                dev->backend_uid = uid;
        return r;
}

int vhm_device_connect(struct vhm_device *dev) {
        return connect_once(dev, dev->cfg.timeout_ms ? dev->cfg.timeout_ms : VHU_DEFAULT_TIMEOUT_MS);
}

int vhm_device_listen_fd(const struct vhm_device *dev) {
        return dev->listen_fd;
}

/* ---- starting and stopping ------------------------------------------------ */

static int send_memory_table(struct vhm_device *dev);

int vhm_device_sync_memory(struct vhm_device *dev) {
        if (!dev->conn || dev->memory_generation == vhm_vm_memory_generation(dev->vm))
                return 0;
        /* Before the first start the table goes out with the rings. */
        if (dev->state != VHM_DEVICE_RUNNING && dev->state != VHM_DEVICE_STOPPED)
                return 0;
        return send_memory_table(dev);
}

static int send_memory_table(struct vhm_device *dev) {
        struct vhu_region regions[VHM_VM_MAX_REGIONS];
        unsigned n = vhm_vm_region_count(dev->vm);
        if (n == 0)
                return dev_fail(dev, -EINVAL, "%s: the VM has no memory", dev->socket);
        for (unsigned i = 0; i < n; i++) {
                const struct vhm_region *r = vhm_vm_region(dev->vm, i);
                regions[i] = (struct vhu_region){
                        .fd = r->fd,
                        .guest_phys_addr = r->guest_phys_addr,
                        .memory_size = r->size,
                        .userspace_addr = r->uaddr,
                        .mmap_offset = r->offset,
                };
        }
        TRY(dev, "memory table", vhu_set_mem_table(dev->conn, regions, n));
        dev->memory_generation = vhm_vm_memory_generation(dev->vm);
        return 0;
}

static int ring_addresses(struct vhm_device *dev, unsigned q, struct vhu_vring_addr *a) {
        const struct vhm_queue_spec *s = &dev->queues[q];
        *a = (struct vhu_vring_addr){
                .index = q,
                .desc_user_addr = vhm_vm_gpa_to_uaddr(dev->vm, s->desc_gpa, desc_bytes(s->size)),
                .avail_user_addr = vhm_vm_gpa_to_uaddr(dev->vm, s->avail_gpa, avail_bytes(s->size)),
                .used_user_addr = vhm_vm_gpa_to_uaddr(dev->vm, s->used_gpa, used_bytes(s->size)),
                .log_guest_addr = s->used_gpa,
                .flags = dev->logging ? VHU_VRING_F_LOG : 0,
        };
        if (!a->desc_user_addr || !a->avail_user_addr || !a->used_user_addr)
                return dev_fail(dev, -EFAULT, "%s: queue %u: ring outside guest memory", dev->socket, q);
        return 0;
}

static int start_ring(struct vhm_device *dev, unsigned q) {
        struct vhu_vring_addr addr;
        int r = ring_addresses(dev, q, &addr);
        if (r < 0)
                return r;
        const struct vhm_queue_spec *s = &dev->queues[q];
        TRY(dev, "SET_VRING_NUM", vhu_set_vring_num(dev->conn, q, s->size));
        TRY(dev, "SET_VRING_BASE", vhu_set_vring_base(dev->conn, q, dev->last_avail[q]));
        TRY(dev, "SET_VRING_ADDR", vhu_set_vring_addr(dev->conn, &addr));
        TRY(dev, "SET_VRING_KICK", vhu_set_vring_kick(dev->conn, q, s->kick_fd));
        TRY(dev, "SET_VRING_CALL", vhu_set_vring_call(dev->conn, q, s->call_fd));
        return 0;
}

static uint64_t wanted_features(const struct vhm_device *dev) {
        uint64_t features = dev->cfg.features & ~VHU_BIT(VHU_VF_LOG_ALL);
        if (dev->logging)
                features |= VHU_BIT(VHU_VF_LOG_ALL);
        return features & vhu_conn_features(dev->conn);
}

/* SET_LOG_BASE once per connection per log; its reply is the acknowledgement. */
static int send_log_base(struct vhm_device *dev) {
        if (dev->log_fd < 0 || dev->log_sent || !dev->conn)
                return 0;
        TRY(dev, "SET_LOG_BASE", vhu_set_log_base(dev->conn, dev->log_fd, dev->log_size, 0));
        dev->log_sent = true;
        return 0;
}

/* Without REPLY_ACK nothing proves the back-end applied a change: a round trip does. */
static int confirm(struct vhm_device *dev) {
        if (vhu_conn_has_protocol_feature(dev->conn, VHU_PF_REPLY_ACK))
                return 0;
        TRY(dev, "barrier", vhu_barrier(dev->conn));
        return 0;
}

static bool protocol_features_acked(const struct vhm_device *dev) {
        return dev->acked_features & VHU_BIT(VHU_VF_PROTOCOL_FEATURES);
}

static int start_rings(struct vhm_device *dev) {
        unsigned nq = queue_count(dev);
        uint32_t needed = (nq >= 32) ? UINT32_MAX : (1u << nq) - 1;
        if ((dev->queues_set & needed) != needed)
                return dev_fail(dev, -EINVAL, "%s: not every queue was set up (%u needed)", dev->socket, nq);

        int r = send_memory_table(dev);
        if (r < 0)
                return r;
        /* The log before any ring may log into it. */
        r = send_log_base(dev);
        if (r < 0)
                return r;
        TRY(dev, "SET_FEATURES", vhu_set_features(dev->conn, wanted_features(dev)));
        dev->acked_features = vhu_conn_acked_features(dev->conn);
        if (dev->cfg.mtu && vhu_conn_has_protocol_feature(dev->conn, VHU_PF_NET_MTU))
                TRY(dev, "NET_SET_MTU", vhu_net_set_mtu(dev->conn, dev->cfg.mtu));
        for (unsigned q = 0; q < nq; q++) {
                r = start_ring(dev, q);
                if (r < 0)
                        return r;
        }
        /* With PROTOCOL_FEATURES, rings start disabled (spec): enable once all are set up. */
        if (protocol_features_acked(dev))
                for (unsigned q = 0; q < nq; q++)
                        TRY(dev, "SET_VRING_ENABLE", vhu_set_vring_enable(dev->conn, q, true));
        if (vhu_conn_has_protocol_feature(dev->conn, VHU_PF_STATUS))
                TRY(dev, "SET_STATUS",
                    vhu_set_status(dev->conn,
                                   STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK));
        dev->state = VHM_DEVICE_RUNNING;
        dev->resume_after_reconnect = true;
        dev->stats.starts++;
        return 0;
}

int vhm_device_start(struct vhm_device *dev) {
        /* A device whose last request was refused may be started again over the same link. */
        bool startable = dev->state == VHM_DEVICE_READY || (dev->state == VHM_DEVICE_FAILED && dev->conn);
        if (dev->awaiting_restore)
                return dev_fail(dev, -EBUSY, "%s: an incoming device starts from a migrated state only", dev->socket);
        if (!startable)
                return dev_fail(dev, -EBUSY, "%s: cannot start a device that is %s", dev->socket,
                                vhm_device_state_name(dev->state));
        for (unsigned q = 0; q < queue_count(dev); q++)
                dev->last_avail[q] = 0;
        return start_rings(dev);
}

int vhm_device_stop(struct vhm_device *dev) {
        if (dev->state != VHM_DEVICE_RUNNING)
                return dev_fail(dev, -EBUSY, "%s: cannot stop a device that is %s", dev->socket,
                                vhm_device_state_name(dev->state));
        dev->resume_after_reconnect = false;
        dev->stop_complete = false;
        unsigned nq = queue_count(dev);
        if (protocol_features_acked(dev))
                for (unsigned q = 0; q < nq; q++)
                        TRY(dev, "SET_VRING_ENABLE", vhu_set_vring_enable(dev->conn, q, false));
        /* GET_VRING_BASE stops the ring and says where to resume. */
        for (unsigned q = 0; q < nq; q++)
                TRY(dev, "GET_VRING_BASE", vhu_get_vring_base(dev->conn, q, &dev->last_avail[q]));
        dev->stop_complete = true;
        dev->state = VHM_DEVICE_STOPPED;
        dev->stats.stops++;
        return 0;
}

int vhm_device_resume(struct vhm_device *dev) {
        if (dev->state != VHM_DEVICE_STOPPED)
                return dev_fail(dev, -EBUSY, "%s: cannot resume a device that is %s", dev->socket,
                                vhm_device_state_name(dev->state));
        return start_rings(dev);
}

/* ---- losing and finding the back-end ---------------------------------------- */

/* The back-end never speaks first on the main socket: readable means closed or broken. */
static bool main_socket_closed(const struct vhm_device *dev) {
        struct pollfd pfd = { .fd = vhu_conn_fd(dev->conn), .events = POLLIN | POLLRDHUP };
        return poll(&pfd, 1, 0) != 0;
}

int vhm_device_poll_connection(struct vhm_device *dev) {
        if (!dev->conn)
                return 0;
        if (main_socket_closed(dev)) {
                dev_fail(dev, -ECONNRESET, "%s: the back-end closed the connection", dev->socket);
                drop_connection(dev);
                return 0;
        }
        /*
         * Serve what the back-end's channel has waiting, bounded by the
         * request timeout and by one more message than a flood may send: a
         * back-end that keeps more than that waiting between two checks is
         * flooding, and the channel's flood limit cuts it off here.  The
         * device goes on: its rings keep running.
         */
        struct vhu_backend_channel *ch = vhu_conn_backend_channel(dev->conn);
        unsigned timeout_ms = dev->cfg.timeout_ms ? dev->cfg.timeout_ms : VHU_DEFAULT_TIMEOUT_MS;
        if (vhu_backend_channel_is_open(ch) &&
            vhu_backend_channel_serve(ch, VHU_BACKEND_CHANNEL_FLOOD_MAX + 1, vhu_deadline_after_ms(timeout_ms)) < 0 &&
            !main_socket_closed(dev)) {
                dev->stats.channel_failures++;
                dev_fail(dev, -ECONNABORTED, "%s: %s", dev->socket, vhu_backend_channel_error(ch));
        }
        return 1;
}

/*
 * What the guest's used rings show: everything up to there the back-end
 * finished.  Read through the VM's guarded path: the back-end that just left
 * may have truncated guest memory on its way out.  Without its memory the
 * device cannot run: the new connection is dropped and the device FAILED.
 */
static int indices_from_used_rings(struct vhm_device *dev) {
        for (unsigned q = 0; q < queue_count(dev); q++) {
                uint16_t idx;
                int r = vhm_vm_load_u16_acquire(dev->vm, dev->queues[q].used_gpa + 2, &idx);
                if (r < 0) {
                        drop_connection(dev);
                        dev->state = VHM_DEVICE_FAILED;
                        return dev_fail(dev, r, "%s: queue %u: cannot read the used index: %s", dev->socket, q,
                                        vhm_vm_error(dev->vm));
                }
                dev->last_avail[q] = idx;
        }
        return 0;
}

int vhm_device_reconnect(struct vhm_device *dev, unsigned timeout_ms) {
        if (dev->conn)
                return 0;
        if (dev->released)
                return dev_fail(dev, -ESHUTDOWN, "%s: the device was migrated away", dev->socket);
        dev->stats.reconnect_attempts++;
        int r = connect_once(dev, timeout_ms);
        if (r < 0) {
                unsigned next = dev->reconnect_delay_ms * 2;
                dev->reconnect_delay_ms = next > RECONNECT_DELAY_MAX_MS ? RECONNECT_DELAY_MAX_MS : next;
                /* Not there yet is the normal case while a back-end restarts. */
                bool absent = r == -ENOENT || r == -ECONNREFUSED || r == -ETIMEDOUT || r == -ECONNRESET;
                return absent ? -EAGAIN : r;
        }
        dev->reconnect_delay_ms = RECONNECT_DELAY_MIN_MS;
        /* Incoming: connected and negotiated is all it may be until restored. */
        if (dev->awaiting_restore)
                return 0;
        if (!dev->resume_after_reconnect) {
                if (dev->stats.starts == 0)
                        return 0;
                /*
                 * Stopped on purpose: stay stopped, with the indices to resume
                 * from.  A stop cut short by the disconnect did not collect them
                 * all: the used rings say where the back-end got to.
                 */
                if (!dev->stop_complete) {
                        r = indices_from_used_rings(dev);
                        if (r < 0)
                                return r;
                        dev->stop_complete = true;
                }
                dev->state = VHM_DEVICE_STOPPED;
                return 0;
        }
        /* The old back-end cannot report its indices: the guest's used rings can. */
        r = indices_from_used_rings(dev);
        if (r < 0)
                return r;
        return start_rings(dev);
}

unsigned vhm_device_reconnect_delay_ms(const struct vhm_device *dev) {
        return dev->reconnect_delay_ms;
}

uid_t vhm_device_backend_uid(const struct vhm_device *dev) {
        return dev->backend_uid;
}

/* ---- dirty logging ------------------------------------------------------ */

static bool same_file(int a, int b) {
        struct stat sa, sb;
        return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int vhm_device_set_log(struct vhm_device *dev, int log_fd, uint64_t log_size) {
        if (log_fd < 0) {
                /* Forget the log; the back-end keeps its mapping until the next SET_LOG_BASE. */
                if (dev->logging)
                        return dev_fail(dev, -EBUSY, "%s: cannot drop the log while logging", dev->socket);
                if (dev->log_fd >= 0)
                        close(dev->log_fd);
                dev->log_fd = -1;
                dev->log_sent = false;
                return 0;
        }
        /* The same log again (a resize already handed it over): once is the rule. */
        if (dev->log_fd >= 0 && same_file(dev->log_fd, log_fd) && dev->log_size == log_size)
                return send_log_base(dev);
        int fd = fcntl(log_fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return dev_fail(dev, -EBADF, "%s: invalid log fd", dev->socket);
        if (dev->log_fd >= 0)
                close(dev->log_fd);
        dev->log_fd = fd;
        dev->log_size = log_size;
        dev->log_sent = false;
        return send_log_base(dev);
}

bool vhm_device_log_acknowledged(const struct vhm_device *dev, int log_fd) {
        return dev->conn && dev->log_sent && dev->log_fd >= 0 && same_file(dev->log_fd, log_fd);
}

static int relog_rings(struct vhm_device *dev) {
        for (unsigned q = 0; q < queue_count(dev); q++) {
                struct vhu_vring_addr addr;
                int r = ring_addresses(dev, q, &addr);
                if (r < 0)
                        return r;
                TRY(dev, "SET_VRING_ADDR", vhu_set_vring_addr(dev->conn, &addr));
        }
        return 0;
}

/* On: LOG_ALL first, then the rings.  Off: rings first, then LOG_ALL. */
static int send_logging(struct vhm_device *dev, bool on) {
        int r = send_log_base(dev);
        if (r < 0)
                return r;
        if (on)
                TRY(dev, "SET_FEATURES", vhu_set_features(dev->conn, wanted_features(dev)));
        r = relog_rings(dev);
        if (r < 0)
                return r;
        if (!on)
                TRY(dev, "SET_FEATURES", vhu_set_features(dev->conn, wanted_features(dev)));
        dev->acked_features = vhu_conn_acked_features(dev->conn);
        return confirm(dev);
}

/*
 * The back-end refused a step of logging's start over a link that still
 * works: its rings never stopped.  It is put back as it was (rings without
 * the log flag, then no LOG_ALL) and runs on, the refusal kept as the error,
 * so that a migration failing there leaves the device as any rollback does.
 * A lost link is a lost back-end: reconnecting finds it again.
 */
static int logging_refused(struct vhm_device *dev, int err) {
        dev->logging = false;
        if (dev->state != VHM_DEVICE_FAILED || !dev->conn)
                return err;
        char why[sizeof(dev->error)];
        uint32_t request = dev->error_request;
        memcpy(why, dev->error, sizeof(why));
        dev->state = VHM_DEVICE_RUNNING;
        if (send_logging(dev, false) < 0) {
                char undo[sizeof(dev->error)];
                memcpy(undo, dev->error, sizeof(undo));
                snprintf(dev->error, sizeof(dev->error), "%.200s; undoing it: %.160s", why, undo);
                return err;
        }
        memcpy(dev->error, why, sizeof(why));
        dev->error_request = request;
        return err;
}

int vhm_device_set_logging(struct vhm_device *dev, bool on) {
        if (on && !(dev->features_offered & VHU_BIT(VHU_VF_LOG_ALL)) && dev->ever_connected)
                return dev_fail(dev, -ENOTSUP, "%s: the back-end cannot log (no LOG_ALL)", dev->socket);
        if (on && dev->log_fd < 0)
                return dev_fail(dev, -EINVAL, "%s: no dirty log was given", dev->socket);
        dev->logging = on;
        /* A device that is not running picks this up when its rings start. */
        if (dev->state != VHM_DEVICE_RUNNING)
                return 0;
        int r = send_logging(dev, on);
        return r < 0 && on ? logging_refused(dev, r) : r;
}

bool vhm_device_logging(const struct vhm_device *dev) {
        return dev->logging;
}

unsigned vhm_device_used_ring_extents(const struct vhm_device *dev, uint64_t gpa[], uint64_t bytes[], unsigned max) {
        unsigned n = 0;
        for (unsigned q = 0; q < queue_count(dev) && n < max; q++) {
                if (!(dev->queues_set & (1u << q)))
                        continue;
                gpa[n] = dev->queues[q].used_gpa;
                bytes[n] = used_bytes(dev->queues[q].size);
                n++;
        }
        return n;
}

void vhm_device_blockers(const struct vhm_device *dev, struct vhm_blockers *out) {
        if (!dev->ever_connected) {
                memset(out, 0, sizeof(*out));
                return;
        }
        vhm_device_type_blockers(dev->cfg.type, dev->features_offered, dev->protocol_features, out);
}

/* ---- settings that can change while running ----------------------------- */

int vhm_device_set_mtu(struct vhm_device *dev, uint16_t mtu) {
        if (mtu < 68)
                return dev_fail(dev, -EINVAL, "%s: MTU %u below the minimum of 68", dev->socket, mtu);
        if (dev->conn && !vhu_conn_has_protocol_feature(dev->conn, VHU_PF_NET_MTU))
                return dev_fail(dev, -ENOTSUP, "%s: the back-end did not negotiate NET_MTU", dev->socket);
        if (dev->conn)
                TRY(dev, "NET_SET_MTU", vhu_net_set_mtu(dev->conn, mtu));
        dev->cfg.mtu = mtu;
        return 0;
}

uint16_t vhm_device_mtu(const struct vhm_device *dev) {
        return dev->cfg.mtu;
}

void vhm_device_disconnect(struct vhm_device *dev) {
        if (dev->state == VHM_DEVICE_RUNNING)
                dev->resume_after_reconnect = true;
        drop_connection(dev);
}

/* ---- announce ------------------------------------------------------------ */

bool vhm_device_needs_rarp(const struct vhm_device *dev) {
        /* A RARP announces a network interface: other devices have nothing to announce. */
        return dev->cfg.type == VHM_DEVICE_TYPE_NET && (dev->protocol_features & VHU_BIT(VHU_PF_RARP)) &&
               !(dev->acked_features & VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE));
}

int vhm_device_announce(struct vhm_device *dev) {
        if (!dev->conn)
                return dev_fail(dev, -ENOTCONN, "%s: not connected", dev->socket);
        if (!(dev->protocol_features & VHU_BIT(VHU_PF_RARP)))
                return dev_fail(dev, -ENOTSUP, "%s: the back-end did not negotiate RARP", dev->socket);
        if (dev->acked_features & VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE))
                return dev_fail(dev, -ENOTSUP, "%s: the guest announces itself (GUEST_ANNOUNCE)", dev->socket);
        enum vhm_device_state was = dev->state;
        int r = vhu_send_rarp(dev->conn, dev->cfg.mac);
        if (r < 0) {
                request_failed(dev, r, "SEND_RARP");
                /* A refused announcement changes no ring: the device runs on as it was. */
                if (dev->conn)
                        dev->state = was;
                return r;
        }
        return 0;
}

/* ---- migration: handing the rings over --------------------------------------- */

/* Bits of the vhost-user link, not of the guest's driver: they do not move with the guest. */
#define LINK_FEATURES (VHU_BIT(VHU_VF_LOG_ALL) | VHU_BIT(VHU_VF_PROTOCOL_FEATURES))

int vhm_device_handoff_get(struct vhm_device *dev, struct vhm_device_handoff *out) {
        if (dev->state != VHM_DEVICE_STOPPED || !dev->stop_complete)
                return dev_fail(dev, -EBUSY, "%s: the rings of a device that is %s have no state to hand over",
                                dev->socket, vhm_device_state_name(dev->state));
        memset(out, 0, sizeof(*out));
        out->acked_features = dev->acked_features & ~VHU_BIT(VHU_VF_LOG_ALL);
        out->protocol_features = dev->protocol_features;
        out->queue_pairs = dev->cfg.queue_pairs;
        memcpy(out->mac, dev->cfg.mac, sizeof(out->mac));
        out->mtu = dev->cfg.mtu;
        out->nrings = queue_count(dev);
        for (unsigned q = 0; q < out->nrings; q++) {
                const struct vhm_queue_spec *s = &dev->queues[q];
                out->rings[q] = (struct vhm_ring_handoff){
                        .size = s->size,
                        .desc_gpa = s->desc_gpa,
                        .avail_gpa = s->avail_gpa,
                        .used_gpa = s->used_gpa,
                        .enabled = true, /* every ring ran until the stop */
                        .last_avail = dev->last_avail[q],
                };
        }
        return 0;
}

/* The first acked feature this device's back-end does not offer, by name. */
static int check_features(struct vhm_device *dev, const struct vhm_device_handoff *h) {
        uint64_t missing = h->acked_features & ~LINK_FEATURES & ~dev->features_offered;
        if (!missing)
                return 0;
        unsigned bit = (unsigned) __builtin_ctzll(missing);
        const char *name = vhu_virtio_feature_name(bit);
        return dev_fail(dev, -ENOTSUP,
                        "%s: the back-end does not offer %s (bit %u) that the source's guest acked (missing 0x%" PRIx64
                        ")",
                        dev->socket, name ? name : "a feature", bit, missing);
}

static int check_ring(struct vhm_device *dev, unsigned q, const struct vhm_ring_handoff *r) {
        if (!is_power_of_two(r->size) || r->size > 32768)
                return dev_fail(dev, -EINVAL, "%s: ring %u: size %u is not a power of two up to 32768", dev->socket, q,
                                r->size);
        if (r->last_avail > UINT16_MAX)
                return dev_fail(dev, -EINVAL, "%s: ring %u: index %" PRIu32 " is not a split ring's", dev->socket, q,
                                r->last_avail);
        const struct vhm_queue_spec spec = { .desc_gpa = r->desc_gpa,
                                             .avail_gpa = r->avail_gpa,
                                             .used_gpa = r->used_gpa };
        int rc = check_alignment(dev, q, &spec);
        if (rc < 0)
                return rc;
        if (!vhm_vm_gpa_to_host(dev->vm, r->desc_gpa, desc_bytes(r->size)) ||
            !vhm_vm_gpa_to_host(dev->vm, r->avail_gpa, avail_bytes(r->size)) ||
            !vhm_vm_gpa_to_host(dev->vm, r->used_gpa, used_bytes(r->size)))
                return dev_fail(dev, -EFAULT, "%s: ring %u: outside guest memory", dev->socket, q);
        return 0;
}

int vhm_device_handoff_check(struct vhm_device *dev, const struct vhm_device_handoff *h) {
        if (!dev->conn)
                return dev_fail(dev, -ENOTCONN, "%s: the back-end is not connected", dev->socket);
        unsigned offered_pairs = vhu_conn_queue_num(dev->conn);
        if (h->queue_pairs > offered_pairs)
                return dev_fail(dev, -ENOTSUP, "%s: the source device has %u queue pairs, the back-end offers %u",
                                dev->socket, h->queue_pairs, offered_pairs);
        if (h->queue_pairs != dev->cfg.queue_pairs || h->nrings != 2 * h->queue_pairs)
                return dev_fail(dev, -ENOTSUP,
                                "%s: the source device has %u queue pairs (%u rings), this one is configured with %u",
                                dev->socket, h->queue_pairs, h->nrings, dev->cfg.queue_pairs);
        int r = check_features(dev, h);
        for (unsigned q = 0; r == 0 && q < h->nrings; q++)
                r = check_ring(dev, q, &h->rings[q]);
        return r;
}

/*
 * The used rings, in the migrated memory, are where the back-end resumes
 * from together with BASE: an index more than a ring ahead of its used ring
 * is not the state of a ring (QEMU's virtio_load refuses it too).
 */
static int check_used_indices(struct vhm_device *dev, const struct vhm_device_handoff *h) {
        for (unsigned q = 0; q < h->nrings; q++) {
                uint16_t used;
                int r = vhm_vm_load_u16_acquire(dev->vm, h->rings[q].used_gpa + 2, &used);
                if (r < 0)
                        return dev_fail(dev, r, "%s: ring %u: cannot read the used index: %s", dev->socket, q,
                                        vhm_vm_error(dev->vm));
                uint16_t ahead = (uint16_t) (h->rings[q].last_avail - used);
                if (ahead > h->rings[q].size)
                        return dev_fail(dev, -EINVAL, "%s: ring %u: index %" PRIu32 " is %u ahead of the used index %u",
                                        dev->socket, q, h->rings[q].last_avail, ahead, used);
        }
        return 0;
}

/* The device takes the source's rings, MAC, MTU and features as its own. */
static void adopt_handoff(struct vhm_device *dev, const struct vhm_device_handoff *h) {
        for (unsigned q = 0; q < h->nrings; q++) {
                const struct vhm_ring_handoff *r = &h->rings[q];
                dev->queues[q].size = r->size;
                dev->queues[q].desc_gpa = r->desc_gpa;
                dev->queues[q].avail_gpa = r->avail_gpa;
                dev->queues[q].used_gpa = r->used_gpa;
                dev->last_avail[q] = r->last_avail;
        }
        dev->cfg.features = h->acked_features & ~VHU_BIT(VHU_VF_LOG_ALL);
        memcpy(dev->cfg.mac, h->mac, sizeof(dev->cfg.mac));
        if (h->mtu)
                dev->cfg.mtu = h->mtu;
}

/* backend-migration-notes.md, DPDK: SET_FEATURES before any ring, the memory table before ADDR. */
static int restore_rings(struct vhm_device *dev, const struct vhm_device_handoff *h) {
        TRY(dev, "SET_FEATURES", vhu_set_features(dev->conn, wanted_features(dev)));
        dev->acked_features = vhu_conn_acked_features(dev->conn);
        int r = send_memory_table(dev);
        if (r == 0)
                r = send_log_base(dev);
        if (r < 0)
                return r;
        if (dev->cfg.mtu && vhu_conn_has_protocol_feature(dev->conn, VHU_PF_NET_MTU))
                TRY(dev, "NET_SET_MTU", vhu_net_set_mtu(dev->conn, dev->cfg.mtu));
        for (unsigned q = 0; q < h->nrings; q++) {
                r = start_ring(dev, q);
                if (r < 0)
                        return r;
        }
        if (protocol_features_acked(dev))
                for (unsigned q = 0; q < h->nrings; q++)
                        if (h->rings[q].enabled)
                                TRY(dev, "SET_VRING_ENABLE", vhu_set_vring_enable(dev->conn, q, true));
        if (vhu_conn_has_protocol_feature(dev->conn, VHU_PF_STATUS))
                TRY(dev, "SET_STATUS",
                    vhu_set_status(dev->conn,
                                   STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK));
        return 0;
}

/* Nothing half started stays: the back-end forgets the rings with the connection. */
static void abandon_restore(struct vhm_device *dev) {
        drop_connection(dev);
        dev->awaiting_restore = true;
        dev->resume_after_reconnect = false;
}

int vhm_device_restore(struct vhm_device *dev, const struct vhm_device_handoff *h) {
        if (!dev->awaiting_restore || dev->state != VHM_DEVICE_READY || !dev->conn)
                return dev_fail(dev, -EBUSY, "%s: cannot restore a device that is %s%s", dev->socket,
                                vhm_device_state_name(dev->state), dev->cfg.incoming ? "" : " (not incoming)");
        int r = vhm_device_handoff_check(dev, h);
        if (r < 0)
                return r;
        uint32_t needed = (1u << h->nrings) - 1; /* nrings <= 16: checked */
        if ((dev->queues_set & needed) != needed)
                return dev_fail(dev, -EINVAL, "%s: not every queue's eventfds were set up (%u needed)", dev->socket,
                                h->nrings);
        r = check_used_indices(dev, h);
        if (r < 0)
                return r;
        adopt_handoff(dev, h);
        r = restore_rings(dev, h);
        if (r < 0) {
                abandon_restore(dev);
                return r;
        }
        dev->awaiting_restore = false;
        dev->state = VHM_DEVICE_RUNNING;
        dev->resume_after_reconnect = true;
        dev->stats.starts++;
        return 0;
}

void vhm_device_unrestore(struct vhm_device *dev, unsigned timeout_ms) {
        if (!dev->cfg.incoming || dev->released)
                return;
        abandon_restore(dev);
        /* Best effort: a back-end not back yet is found by the next reconnect. */
        (void) connect_once(dev, timeout_ms);
}

bool vhm_device_awaiting_restore(const struct vhm_device *dev) {
        return dev->awaiting_restore;
}

int vhm_device_resume_after_migration(struct vhm_device *dev) {
        switch (dev->state) {
        case VHM_DEVICE_RUNNING:
                return 0;
        case VHM_DEVICE_STOPPED:
                return vhm_device_resume(dev);
        case VHM_DEVICE_DISCONNECTED:
                /* The back-end left during the migration: the used rings say where to resume. */
                dev->resume_after_reconnect = !dev->released && dev->stats.starts > 0;
                dev->stop_complete = false;
                return 0;
        case VHM_DEVICE_FAILED:
                if (!dev->conn)
                        break;
                /* A stop refused half-way: not every index came back, the used rings have them all. */
                return indices_from_used_rings(dev) < 0 ? -EIO : start_rings(dev);
        case VHM_DEVICE_READY:
                break;
        }
        return dev_fail(dev, -EBUSY, "%s: cannot resume a device that is %s", dev->socket,
                        vhm_device_state_name(dev->state));
}

void vhm_device_release(struct vhm_device *dev) {
        dev->resume_after_reconnect = false;
        drop_connection(dev);
        if (dev->listen_fd >= 0) {
                close(dev->listen_fd);
                dev->listen_fd = -1;
                (void) vhu_socket_unlink_if_same(dev->socket, &dev->listen_file);
        }
        dev->released = true;
}

bool vhm_device_released(const struct vhm_device *dev) {
        return dev->released;
}

/* ---- restart: saving and adopting a connection ----------------------------- */

int vhm_device_save(const struct vhm_device *dev, struct vhm_device_saved *out) {
        bool settled = dev->state == VHM_DEVICE_READY || dev->state == VHM_DEVICE_RUNNING ||
                       dev->state == VHM_DEVICE_STOPPED;
        if (!dev->conn || !settled)
                return -EBUSY;
        *out = (struct vhm_device_saved){
                .state = dev->state,
                .features_offered = dev->features_offered,
                .acked_features = dev->acked_features,
                .protocol_features = dev->protocol_features,
                .protocol_features_offered = dev->protocol_features_offered,
                .queue_pairs = dev->cfg.queue_pairs,
                .backend_uid = dev->backend_uid,
                .logging = dev->logging,
                .log_acknowledged = dev->log_fd >= 0 && dev->log_sent,
                .stop_complete = dev->stop_complete,
                .mtu = dev->cfg.mtu,
        };
        memcpy(out->last_avail, dev->last_avail, sizeof(out->last_avail));
        return 0;
}

struct vhu_conn *vhm_device_take_conn(struct vhm_device *dev) {
        struct vhu_conn *conn = dev->conn;
        if (!conn)
                return NULL;
        dev->requests_closed += vhu_conn_requests(conn);
        dev->request_failures_closed += vhu_conn_request_failures(conn);
        dev->conn = NULL;
        dev->resume_after_reconnect = false;
        dev->state = VHM_DEVICE_DISCONNECTED;
        return conn;
}

static bool adoptable_state(enum vhm_device_state s) {
        return s == VHM_DEVICE_READY || s == VHM_DEVICE_RUNNING || s == VHM_DEVICE_STOPPED;
}

/* The connection negotiated what the record says it did. */
static int check_negotiated(struct vhm_device *dev, struct vhu_conn *conn, const struct vhm_device_saved *s) {
        if (!vhu_conn_is_connected(conn))
                return dev_fail(dev, -ENOTCONN, "%s: the connection to adopt is closed", dev->socket);
        if (vhu_conn_features(conn) != s->features_offered || vhu_conn_protocol_features(conn) != s->protocol_features)
                return dev_fail(dev, -EINVAL,
                                "%s: the connection negotiated features 0x%" PRIx64 " and protocol features 0x%" PRIx64
                                ", the saved device 0x%" PRIx64 " and 0x%" PRIx64,
                                dev->socket, vhu_conn_features(conn), vhu_conn_protocol_features(conn),
                                s->features_offered, s->protocol_features);
        if (s->state != VHM_DEVICE_READY && vhu_conn_acked_features(conn) != s->acked_features)
                return dev_fail(dev, -EINVAL,
                                "%s: the connection acked features 0x%" PRIx64 ", the saved device 0x%" PRIx64,
                                dev->socket, vhu_conn_acked_features(conn), s->acked_features);
        return 0;
}

/* The record fits this device: its state, its queues, its log. */
static int check_saved(struct vhm_device *dev, const struct vhm_device_adoption *a, const struct vhm_device_saved *s) {
        if (dev->conn || dev->released)
                return dev_fail(dev, -EBUSY, "%s: only a device that was never connected can adopt", dev->socket);
        if (!a->conn)
                return dev_fail(dev, -EINVAL, "%s: no connection to adopt", dev->socket);
        if (!adoptable_state(s->state))
                return dev_fail(dev, -EINVAL, "%s: cannot adopt a device that was %s", dev->socket,
                                vhm_device_state_name(s->state));
        if (s->queue_pairs != dev->cfg.queue_pairs)
                return dev_fail(dev, -EINVAL, "%s: the saved device has %u queue pairs, this one %u", dev->socket,
                                s->queue_pairs, dev->cfg.queue_pairs);
        unsigned nq = queue_count(dev);
        uint32_t needed = (nq >= 32) ? UINT32_MAX : (1u << nq) - 1;
        if (s->state != VHM_DEVICE_READY && (dev->queues_set & needed) != needed)
                return dev_fail(dev, -EINVAL, "%s: not every queue was set up before adopting (%u needed)", dev->socket,
                                nq);
        for (unsigned q = 0; q < nq; q++)
                if (s->last_avail[q] > UINT16_MAX)
                        return dev_fail(dev, -EINVAL, "%s: queue %u: saved index %u is not a ring index", dev->socket,
                                        q, s->last_avail[q]);
        if ((s->logging || s->log_acknowledged) && a->log_fd < 0)
                return dev_fail(dev, -EINVAL, "%s: the saved device logs, but no log came with it", dev->socket);
        return check_negotiated(dev, a->conn, s);
}

/* The peer of the adopted connection is the back-end that negotiated it. */
static int check_adopted_peer(struct vhm_device *dev, struct vhu_conn *conn, const struct vhm_device_saved *s) {
        uid_t uid;
        char why[160];
        int r = vhu_socket_peer_cred(vhu_conn_fd(conn), &uid, NULL, NULL);
        if (r < 0)
                return dev_fail(dev, r, "%s: cannot tell who the peer is (SO_PEERCRED): %s", dev->socket, strerror(-r));
        if (s->backend_uid != (uid_t) -1 && uid != s->backend_uid)
                return dev_fail(dev, -EPERM, "%s: the adopted peer runs as uid %u, the back-end was uid %u",
                                dev->socket, (unsigned) uid, (unsigned) s->backend_uid);
        dev->backend_uid = s->backend_uid;
        if (peer_refusal(dev, uid, 0, why, sizeof(why)))
                return dev_fail(dev, -EPERM, "%s: refused the adopted peer: %s", dev->socket, why);
        return 0;
}

/* A server-mode device's listening socket: ours only when bound at the device's path. */
static int adopt_listener(struct vhm_device *dev, int fd) {
        struct sockaddr_un sa;
        socklen_t len = sizeof(sa);
        struct stat st;
        if (!dev->cfg.server)
                return dev_fail(dev, -EINVAL, "%s: a client-mode device has no listening socket", dev->socket);
        if (getsockname(fd, (struct sockaddr *) &sa, &len) < 0 || sa.sun_family != AF_UNIX ||
            len <= offsetof(struct sockaddr_un, sun_path) ||
            strncmp(sa.sun_path, dev->socket, sizeof(sa.sun_path)) != 0)
                return dev_fail(dev, -EINVAL, "%s: the listening socket to adopt is not bound there", dev->socket);
        if (lstat(dev->socket, &st) < 0 || !S_ISSOCK(st.st_mode))
                return dev_fail(dev, -ENOENT, "%s: the listening socket's file is gone", dev->socket);
        dev->listen_file = (struct vhu_socket_file){ .dev = st.st_dev, .ino = st.st_ino, .valid = true };
        dev->listen_fd = fd;
        return 0;
}

/* Everything was checked: the device takes the record's state as its own. */
static void take_saved(struct vhm_device *dev, const struct vhm_device_saved *s) {
        dev->state = s->state;
        dev->features_offered = s->features_offered;
        dev->acked_features = s->acked_features;
        dev->protocol_features = s->protocol_features;
        dev->protocol_features_offered = s->protocol_features_offered;
        dev->logging = s->logging;
        dev->log_sent = s->log_acknowledged;
        dev->stop_complete = s->stop_complete;
        dev->resume_after_reconnect = s->state == VHM_DEVICE_RUNNING;
        dev->memory_generation = vhm_vm_memory_generation(dev->vm);
        dev->ever_connected = true;
        dev->cfg.mtu = s->mtu;
        memcpy(dev->last_avail, s->last_avail, sizeof(dev->last_avail));
        if (s->state != VHM_DEVICE_READY)
                dev->stats.starts++;
}

static void refuse_adoption(const struct vhm_device_adoption *a) {
        vhu_conn_free(a->conn);
        if (a->listen_fd >= 0)
                close(a->listen_fd);
}

int vhm_device_adopt(struct vhm_device *dev, const struct vhm_device_adoption *a,
                     const struct vhm_device_saved *saved) {
        int r = check_saved(dev, a, saved);
        if (r == 0)
                r = check_adopted_peer(dev, a->conn, saved);
        int log_fd = -1;
        if (r == 0 && a->log_fd >= 0 && (log_fd = fcntl(a->log_fd, F_DUPFD_CLOEXEC, 3)) < 0)
                r = dev_fail(dev, -EBADF, "%s: invalid log fd", dev->socket);
        if (r == 0 && a->listen_fd >= 0)
                r = adopt_listener(dev, a->listen_fd);
        if (r < 0) {
                if (log_fd >= 0)
                        close(log_fd);
                refuse_adoption(a);
                return r;
        }
        if (dev->log_fd >= 0)
                close(dev->log_fd);
        dev->log_fd = log_fd;
        dev->log_size = log_fd >= 0 ? a->log_size : 0;
        dev->conn = a->conn;
        take_saved(dev, saved);
        dev->stats.connects++;
        return 0;
}

int vhm_device_adopt_listener(struct vhm_device *dev, int fd) {
        int r = dev->listen_fd >= 0 ? dev_fail(dev, -EBUSY, "%s: the device listens already", dev->socket)
                                    : adopt_listener(dev, fd);
        if (r < 0)
                close(fd);
        return r;
}

const struct vhm_device_config *vhm_device_get_config(const struct vhm_device *dev) {
        return &dev->cfg;
}

int vhm_device_get_queue(const struct vhm_device *dev, unsigned index, struct vhm_queue_spec *out) {
        if (index >= queue_count(dev))
                return -EINVAL;
        *out = dev->queues[index];
        if (!(dev->queues_set & (1u << index)))
                out->kick_fd = out->call_fd = -1;
        return 0;
}

void vhm_device_free_for_handover(struct vhm_device *dev) {
        if (!dev)
                return;
        vhu_conn_free(vhm_device_take_conn(dev));
        /* The successor listens on the same file: closing our fd must not take it away. */
        if (dev->listen_fd >= 0)
                close(dev->listen_fd);
        dev->listen_fd = -1;
        vhm_device_free(dev);
}

/* ---- observers ------------------------------------------------------------- */

enum vhm_device_state vhm_device_state(const struct vhm_device *dev) {
        return dev->state;
}
const char *vhm_device_error(const struct vhm_device *dev) {
        return dev->error;
}
uint32_t vhm_device_error_request(const struct vhm_device *dev) {
        return dev->error_request;
}
const char *vhm_device_socket(const struct vhm_device *dev) {
        return dev->socket;
}
uint64_t vhm_device_features(const struct vhm_device *dev) {
        return dev->features_offered;
}
uint64_t vhm_device_acked_features(const struct vhm_device *dev) {
        return dev->acked_features;
}
uint64_t vhm_device_protocol_features(const struct vhm_device *dev) {
        return dev->protocol_features;
}
uint64_t vhm_device_protocol_features_offered(const struct vhm_device *dev) {
        return dev->protocol_features_offered;
}
unsigned vhm_device_queue_pairs(const struct vhm_device *dev) {
        return dev->cfg.queue_pairs;
}
const struct vhm_device_stats *vhm_device_stats(const struct vhm_device *dev) {
        return &dev->stats;
}
struct vhu_conn *vhm_device_conn(const struct vhm_device *dev) {
        return dev->conn;
}

unsigned vhm_device_ring_index(const struct vhm_device *dev, unsigned queue) {
        return queue < VHM_DEVICE_MAX_QUEUES ? dev->last_avail[queue] : 0;
}

void vhm_device_request_counts(const struct vhm_device *dev, uint64_t *requests, uint64_t *failures) {
        *requests = dev->requests_closed + (dev->conn ? vhu_conn_requests(dev->conn) : 0);
        *failures = dev->request_failures_closed + (dev->conn ? vhu_conn_request_failures(dev->conn) : 0);
}

enum vhm_device_type vhm_device_type(const struct vhm_device *dev) {
        return dev->cfg.type;
}

struct vhm_vm *vhm_device_vm(const struct vhm_device *dev) {
        return dev->vm;
}

/* ---- migration: the back-end's own state ------------------------------------- */

bool vhm_device_has_state_transfer(const struct vhm_device *dev) {
        return dev->conn && vhu_conn_has_protocol_feature(dev->conn, VHU_PF_DEVICE_STATE);
}

static uint64_t state_deadline(const struct vhm_device *dev) {
        return vhu_deadline_after_ms(dev->cfg.timeout_ms ? dev->cfg.timeout_ms : VHU_DEFAULT_TIMEOUT_MS);
}

/* Waits for fd to be ready for `events` until the deadline: 0, or -ETIMEDOUT / -errno. */
static int wait_state_fd(int fd, short events, uint64_t deadline) {
        for (;;) {
                uint64_t now = vhu_now_usec();
                if (now >= deadline)
                        return -ETIMEDOUT;
                uint64_t left_ms = (deadline - now + 999) / 1000;
                struct pollfd pfd = { .fd = fd, .events = events };
                int r = poll(&pfd, 1, left_ms > 60000 ? 60000 : (int) left_ms);
                if (r > 0)
                        return 0;
                if (r < 0 && errno != EINTR)
                        return -errno;
        }
}

struct state_buf {
        uint8_t *data;
        size_t len, cap;
};

static int state_buf_grow(struct state_buf *b) {
        size_t cap = b->cap ? 2 * b->cap : 65536;
        if (cap > VHM_DEVICE_STATE_MAX)
                cap = VHM_DEVICE_STATE_MAX;
        uint8_t *d = realloc(b->data, cap);
        if (!d)
                return -ENOMEM;
        b->data = d;
        b->cap = cap;
        return 0;
}

/* The back-end's blob to EOF, at most VHM_DEVICE_STATE_MAX bytes (one more is an error). */
static int read_state(struct vhm_device *dev, int fd, struct state_buf *b) {
        uint64_t deadline = state_deadline(dev);
        for (;;) {
                if (b->len == b->cap && b->cap < VHM_DEVICE_STATE_MAX && state_buf_grow(b) < 0)
                        return dev_fail(dev, -ENOMEM, "%s: device state: out of memory", dev->socket);
                uint8_t extra;
                bool full = b->len == b->cap;
                ssize_t n = full ? read(fd, &extra, 1) : read(fd, b->data + b->len, b->cap - b->len);
                if (n == 0)
                        return 0;
                if (n > 0 && full)
                        return dev_fail(dev, -EFBIG, "%s: device state: the back-end sent more than %u bytes",
                                        dev->socket, VHM_DEVICE_STATE_MAX);
                if (n > 0) {
                        b->len += (size_t) n;
                        continue;
                }
                if (errno == EINTR)
                        continue;
                int r = errno == EAGAIN ? wait_state_fd(fd, POLLIN, deadline) : -errno;
                if (r < 0)
                        return dev_fail(dev, r, "%s: device state: reading the back-end's state: %s", dev->socket,
                                        r == -ETIMEDOUT ? "not complete in time" : strerror(-r));
        }
}

/* A pipe for the transfer; both ends non-blocking, close-on-exec. */
static int state_pipe(struct vhm_device *dev, int p[2]) {
        if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
                return dev_fail(dev, -errno, "%s: device state: pipe: %s", dev->socket, strerror(errno));
        return 0;
}

/* The end we keep: ours, or the one the back-end returned (then it must be used, spec). */
static int state_channel(int ours, int theirs) {
        if (theirs < 0)
                return ours;
        close(ours);
        (void) fcntl(theirs, F_SETFL, fcntl(theirs, F_GETFL) | O_NONBLOCK);
        return theirs;
}

static bool state_ready(struct vhm_device *dev, const char *what) {
        if (vhm_device_has_state_transfer(dev))
                return true;
        dev_fail(dev, -ENOTSUP, "%s: %s: the back-end did not negotiate DEVICE_STATE", dev->socket, what);
        return false;
}

int vhm_device_save_state(struct vhm_device *dev, uint8_t **blob, size_t *len) {
        *blob = NULL;
        *len = 0;
        if (!state_ready(dev, "saving the device state"))
                return -ENOTSUP;
        /* The specification's stopped phase: "the vhost-user device is suspended". */
        if (dev->state != VHM_DEVICE_STOPPED || !dev->stop_complete)
                return dev_fail(dev, -EBUSY, "%s: saving the device state of a device that is %s, not stopped",
                                dev->socket, vhm_device_state_name(dev->state));
        int p[2], theirs = -1;
        int r = state_pipe(dev, p);
        if (r < 0)
                return r;
        r = vhu_set_device_state_fd(dev->conn, VHU_TRANSFER_SAVE, VHU_TRANSFER_STOPPED, p[1], &theirs);
        /* The back-end holds its own copy: ours must go for its close to be our EOF. */
        close(p[1]);
        if (r < 0) {
                close(p[0]);
                return request_failed(dev, r, "SET_DEVICE_STATE_FD");
        }
        int fd = state_channel(p[0], theirs);
        struct state_buf b = { 0 };
        r = read_state(dev, fd, &b);
        close(fd);
        if (r < 0) {
                free(b.data);
                return r;
        }
        r = vhu_check_device_state(dev->conn);
        if (r < 0) {
                free(b.data);
                return request_failed(dev, r, "CHECK_DEVICE_STATE");
        }
        *blob = b.data;
        *len = b.len;
        return 0;
}

/*
 * Writes the blob; a back-end that closed its end makes EPIPE, not a SIGPIPE
 * that would kill a process that did not ignore it: the signal is blocked in
 * this thread while writing and a pending one taken back.
 */
static int write_state(struct vhm_device *dev, int fd, const uint8_t *blob, size_t len) {
        sigset_t pipe_set, old, pending;
        sigemptyset(&pipe_set);
        sigaddset(&pipe_set, SIGPIPE);
        sigpending(&pending);
        bool was_pending = sigismember(&pending, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
        uint64_t deadline = state_deadline(dev);
        size_t done = 0;
        int r = 0;
        while (done < len && r == 0) {
                ssize_t n = write(fd, blob + done, len - done);
                if (n > 0)
                        done += (size_t) n;
                else if (n < 0 && errno == EAGAIN)
                        r = wait_state_fd(fd, POLLOUT, deadline);
                else if (n < 0 && errno != EINTR)
                        r = -errno;
        }
        sigpending(&pending);
        if (!was_pending && sigismember(&pending, SIGPIPE)) {
                struct timespec zero = { 0, 0 };
                (void) sigtimedwait(&pipe_set, NULL, &zero);
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                return dev_fail(dev, r, "%s: device state: writing %zu bytes to the back-end: %s (%zu written)",
                                dev->socket, len, r == -ETIMEDOUT ? "not taken in time" : strerror(-r), done);
        return 0;
}

int vhm_device_load_state(struct vhm_device *dev, const void *blob, size_t len) {
        if (!state_ready(dev, "loading the device state"))
                return -ENOTSUP;
        if (!dev->awaiting_restore || dev->state != VHM_DEVICE_READY)
                return dev_fail(dev, -EBUSY, "%s: loading the device state of a device that is %s%s", dev->socket,
                                vhm_device_state_name(dev->state), dev->awaiting_restore ? "" : " (already restored)");
        if (len > VHM_DEVICE_STATE_MAX)
                return dev_fail(dev, -EFBIG, "%s: device state of %zu bytes (at most %u)", dev->socket, len,
                                VHM_DEVICE_STATE_MAX);
        int p[2], theirs = -1;
        int r = state_pipe(dev, p);
        if (r < 0)
                return r;
        r = vhu_set_device_state_fd(dev->conn, VHU_TRANSFER_LOAD, VHU_TRANSFER_STOPPED, p[0], &theirs);
        close(p[0]);
        if (r < 0) {
                close(p[1]);
                return request_failed(dev, r, "SET_DEVICE_STATE_FD");
        }
        int fd = state_channel(p[1], theirs);
        r = write_state(dev, fd, blob, len);
        /* Our close is the back-end's EOF: the whole state is in. */
        close(fd);
        if (r < 0)
                return r;
        TRY(dev, "CHECK_DEVICE_STATE", vhu_check_device_state(dev->conn));
        return 0;
}
