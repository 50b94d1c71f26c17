/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: the device layer against a hostile back-end.  A VM with one
 * sealed memfd region and one queue pair runs a device in client mode; a
 * peer thread listens, accepts (again after every reconnect) and answers
 * each request the front-end sends as its script says.  The input:
 *
 *   bytes 0..7    the device operations, one per byte (op % OP_COUNT)
 *   bytes 8..15   the virtio features the back-end offers
 *   bytes 16..23  the protocol features it offers
 *   then          one byte per reply: how to answer (see reply_mode)
 *
 * When the input runs out, the back-end behaves, so every run ends.  Whatever
 * the bytes, the device must fail cleanly: no crash, no hang, no leaked fd or
 * memory.  fuzz_device_one() returns how many operations succeeded.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migrate/device.h"
#include "migrate/vm.h"
#include "proto/vhost-user-frontend.h"
#include "proto/vhost-user-table.h"
#include "tests/fuzz/fuzz.h"

#define MEMORY_SIZE (1u << 20)
#define LOG_SIZE    4096u
#define TIMEOUT_MS  20u

enum op {
        OP_START,
        OP_STOP,
        OP_RESUME,
        OP_LOG_ON,
        OP_LOG_OFF,
        OP_RECONNECT,
        OP_POLL,
        OP_DROP,
        OP_COUNT
};

/* Without input, a good VMM's sequence. */
static const uint8_t default_ops[8] = {
        OP_START, OP_LOG_ON, OP_STOP, OP_RESUME, OP_LOG_OFF, OP_POLL, OP_STOP, OP_RESUME
};

struct peer {
        int listen_fd;
        const uint8_t *script;
        size_t script_len, pos;
        uint64_t features, protocol_features;
        int channel; /* the back-end channel, once the front-end sent it */
        bool flooding;
        atomic_bool stop;
};

static uint8_t next_mode(struct peer *p) {
        return p->pos < p->script_len ? p->script[p->pos++] : 0;
}

/* One burst of CONFIG_CHANGE_MSG on the channel, without waiting; the channel is dropped once closed. */
static void flood_once(struct peer *p) {
        struct vhu_hdr burst[32];
        for (unsigned i = 0; i < 32; i++)
                burst[i] = (struct vhu_hdr){ .request = VHU_BREQ_CONFIG_CHANGE_MSG, .flags = VHU_VERSION };
        ssize_t n = send(p->channel, burst, sizeof(burst), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
                close(p->channel);
                p->channel = -1;
        }
}

static bool expects_reply(const struct peer *p, const struct vhu_msg *m) {
        const struct vhu_request_info *info = vhu_request_info(m->hdr.request);
        if (!info)
                return false;
        if (m->hdr.flags & VHU_FLAG_NEED_REPLY)
                return true;
        return info->reply == VHU_REPLY_ALWAYS ||
               (info->reply == VHU_REPLY_IF_LOG_SHMFD && (p->protocol_features & VHU_BIT(VHU_PF_LOG_SHMFD)));
}

/* What a well-behaved back-end answers. */
static void good_reply(struct peer *p, const struct vhu_msg *req, struct vhu_msg *rep) {
        const struct vhu_request_info *info = vhu_request_info(req->hdr.request);
        *rep = (struct vhu_msg){ .hdr = { .request = req->hdr.request, .flags = VHU_REPLY_FLAGS, .size = 8 } };
        if (req->hdr.flags & VHU_FLAG_NEED_REPLY)
                return; /* an ack: status 0 */
        switch (req->hdr.request) {
        case VHU_REQ_GET_FEATURES:
                rep->payload.u64 = p->features;
                break;
        case VHU_REQ_GET_PROTOCOL_FEATURES:
                rep->payload.u64 = p->protocol_features;
                break;
        case VHU_REQ_GET_QUEUE_NUM:
                rep->payload.u64 = 1;
                break;
        case VHU_REQ_GET_MAX_MEM_SLOTS:
                rep->payload.u64 = 8;
                break;
        case VHU_REQ_GET_VRING_BASE:
                rep->hdr.size = sizeof(struct vhu_vring_state);
                rep->payload.state = (struct vhu_vring_state){ .index = req->payload.state.index };
                break;
        default:
                rep->hdr.size = info->reply_size.min;
                break;
        }
}

/*
 * How to answer, from the script byte: mostly well; else with an fd, a wrong
 * size, another request's number, not at all, by hanging up, with half a
 * header on the channel first, or by flooding the channel from now on.
 */
static int answer(struct peer *p, int fd, const struct vhu_msg *req) {
        struct vhu_msg rep;
        good_reply(p, req, &rep);
        uint8_t mode = next_mode(p);
        int efd = -1;
        if (mode >= 250)
                p->flooding = true;
        else if (mode >= 245 && p->channel >= 0)
                (void) send(p->channel, &rep.hdr, sizeof(rep.hdr) / 2, MSG_DONTWAIT | MSG_NOSIGNAL);
        else if (mode >= 240)
                return -ECONNRESET;
        else if (mode >= 235)
                return 0;
        else if (mode >= 225)
                rep.hdr.request ^= 1;
        else if (mode >= 215)
                rep.hdr.size += 4;
        else if (mode >= 200 && (efd = eventfd(0, EFD_CLOEXEC)) >= 0)
                rep.fds[rep.nfds++] = efd;
        int r = vhu_send_msg(fd, &rep, NULL, vhu_deadline_after_ms(100));
        if (efd >= 0)
                close(efd);
        return r;
}

/* Reads one request; keeps the back-end channel it may carry, closes any other fd. */
static int read_request(struct peer *p, int fd, struct vhu_msg *m) {
        int r = vhu_recv_hdr(fd, m, NULL, vhu_deadline_after_ms(100));
        if (r < 0)
                return r;
        if (m->hdr.size > sizeof(m->payload)) {
                vhu_msg_close_fds(m);
                return -EPROTO;
        }
        r = vhu_recv_payload(fd, m, NULL, vhu_deadline_after_ms(100));
        if (r < 0)
                return r;
        if (m->hdr.request == VHU_REQ_SET_PROTOCOL_FEATURES)
                p->protocol_features = m->payload.u64;
        if (m->hdr.request == VHU_REQ_SET_BACKEND_REQ_FD && m->nfds == 1) {
                if (p->channel >= 0)
                        close(p->channel);
                p->channel = m->fds[0];
                m->nfds = 0;
        }
        vhu_msg_close_fds(m);
        return 0;
}

/* One connection, until the front-end hangs up, the script hangs up, or the run ends. */
static void serve(struct peer *p, int fd) {
        uint64_t offered_pf = p->protocol_features;
        while (!atomic_load(&p->stop)) {
                if (p->flooding && p->channel >= 0)
                        flood_once(p);
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                if (poll(&pfd, 1, p->flooding ? 0 : 10) <= 0)
                        continue;
                struct vhu_msg m;
                if (read_request(p, fd, &m) < 0)
                        break;
                if (expects_reply(p, &m) && answer(p, fd, &m) < 0)
                        break;
        }
        if (p->channel >= 0)
                close(p->channel);
        p->channel = -1;
        p->flooding = false;
        p->protocol_features = offered_pf; /* the next connection negotiates afresh */
}

static void *peer_main(void *arg) {
        struct peer *p = arg;
        while (!atomic_load(&p->stop)) {
                struct pollfd pfd = { .fd = p->listen_fd, .events = POLLIN };
                if (poll(&pfd, 1, 10) <= 0)
                        continue;
                int fd = vhu_socket_accept(p->listen_fd, NULL, vhu_deadline_after_ms(10));
                if (fd < 0)
                        continue;
                serve(p, fd);
                close(fd);
        }
        return NULL;
}

static uint64_t input_u64(const uint8_t *data, size_t size, size_t at, uint64_t fallback) {
        if (size < at + 8)
                return fallback;
        uint64_t v;
        memcpy(&v, data + at, 8);
        return v;
}

/* A sealed memfd: what the VM model asks of guest memory and of the log. */
static int sealed_memfd(const char *name, size_t size) {
        int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -1;
        if (ftruncate(fd, (off_t) size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
                close(fd);
                return -1;
        }
        return fd;
}

static int run_op(struct vhm_device *dev, uint8_t op) {
        switch (op % OP_COUNT) {
        case OP_START:
                return vhm_device_start(dev);
        case OP_STOP:
                return vhm_device_stop(dev);
        case OP_RESUME:
                return vhm_device_resume(dev);
        case OP_LOG_ON:
                return vhm_device_set_logging(dev, true);
        case OP_LOG_OFF:
                return vhm_device_set_logging(dev, false);
        case OP_RECONNECT:
                return vhm_device_reconnect(dev, TIMEOUT_MS);
        case OP_POLL:
                return vhm_device_poll_connection(dev) > 0 ? 0 : -ENOTCONN;
        default:
                vhm_device_disconnect(dev);
                return vhm_device_reconnect(dev, TIMEOUT_MS);
        }
}

/* The VM, its log and queue eventfds, and the device; returns the device ops that succeeded. */
static int drive_device(const char *path, const uint8_t *data, size_t size) {
        int mem = sealed_memfd("fuzz-guest", MEMORY_SIZE), log = sealed_memfd("fuzz-log", LOG_SIZE);
        int efd[4] = { -1, -1, -1, -1 };
        for (unsigned i = 0; i < 4; i++)
                efd[i] = eventfd(0, EFD_CLOEXEC);
        struct vhm_vm *vm = NULL;
        struct vhm_device *dev = NULL;
        int ok = 0;
        struct vhm_region_spec region = { .fd = mem, .guest_phys_addr = 0, .size = MEMORY_SIZE };
        struct vhm_device_config cfg = { .socket = path,
                                         .timeout_ms = TIMEOUT_MS,
                                         .features = ~UINT64_C(0),
                                         .queue_pairs = 1,
                                         .mac = { 0x52, 0x54, 0, 0, 0, 1 } };
        if (mem < 0 || log < 0 || vhm_vm_new("fuzz", &vm) < 0 || vhm_vm_add_region(vm, &region) < 0 ||
            vhm_device_new(vm, &cfg, &dev) < 0)
                goto out;
        for (unsigned q = 0; q < 2; q++) {
                struct vhm_queue_spec spec = {
                        .size = 256,
                        .desc_gpa = 0x10000 + q * 0x4000,
                        .avail_gpa = 0x11000 + q * 0x4000,
                        .used_gpa = 0x12000 + q * 0x4000,
                        .kick_fd = efd[2 * q],
                        .call_fd = efd[2 * q + 1],
                };
                if (vhm_device_set_queue(dev, q, &spec) < 0)
                        goto out;
        }
        if (vhm_device_set_log(dev, log, LOG_SIZE) < 0 || vhm_device_connect(dev) < 0)
                goto out;
        for (unsigned i = 0; i < 8; i++)
                ok += run_op(dev, i < size ? data[i] : default_ops[i]) == 0;
out:
        vhm_device_free(dev);
        vhm_vm_free(vm);
        for (unsigned i = 0; i < 4; i++)
                if (efd[i] >= 0)
                        close(efd[i]);
        if (mem >= 0)
                close(mem);
        if (log >= 0)
                close(log);
        return ok;
}

int fuzz_device_one(const uint8_t *data, size_t size) {
        char dir[] = "/tmp/vhostmig-fuzz-XXXXXX";
        if (!mkdtemp(dir))
                return 0;
        char path[64];
        snprintf(path, sizeof(path), "%s/sock", dir);
        struct peer p = {
                .listen_fd = vhu_socket_listen(path),
                .script = size > 24 ? data + 24 : NULL,
                .script_len = size > 24 ? size - 24 : 0,
                .features = input_u64(data, size, 8, UINT64_C(0xd7c66e7cb) | VHU_BIT(VHU_VF_LOG_ALL)) |
                            VHU_BIT(VHU_VF_PROTOCOL_FEATURES),
                .protocol_features = input_u64(data, size, 16, vhu_supported_protocol_features()),
                .channel = -1,
        };
        int ok = 0;
        pthread_t t;
        if (p.listen_fd >= 0 && pthread_create(&t, NULL, peer_main, &p) == 0) {
                ok = drive_device(path, data, size);
                atomic_store(&p.stop, true);
                pthread_join(t, NULL);
        }
        if (p.listen_fd >= 0)
                close(p.listen_fd);
        unlink(path);
        rmdir(dir);
        return ok;
}
