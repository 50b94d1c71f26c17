/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: a destination that answers anything, to a migration source.
 * vhm_migrate_to() runs stop-and-copy of a small VM (two sealed memfd
 * regions, 64 KiB at 0 and 32 KiB at 1 MiB, a few pages non-zero, no
 * devices) to a peer thread that reads whatever the source sends and writes
 * the input back as its answer.  The first input byte says when:
 *
 *   bit 0  at once, before HELLO has arrived (else after the source's END)
 *   bit 1  then close the socket without reading on (else read to the end)
 *
 * and the rest is the answer: COMMITTED, ABORTED with a reason, garbage,
 * a record cut short.  Whatever the bytes: no crash, no hang, no leaked fd
 * or memory, and the source's verdict is consistent: 0 only as completed,
 * otherwise failed or postmigrate-unknown with the reason in words.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migrate/migration.h"
#include "migrate/stream.h"
#include "migrate/vm.h"
#include "tests/fuzz/fuzz.h"

#define TIMEOUT_MS 1000u

static const char fuzz_token[] = "0123456789abcdef0123456789abcdef";

struct peer {
        int fd;
        const uint8_t *answer;
        size_t size;
        bool answer_at_once, close_after;
        /* The record being read: its header, then how much of its payload is left. */
        uint8_t hdr[VHM_REC_HDR_SIZE];
        size_t hdr_have;
        uint64_t payload_left;
        bool end_seen;
};

/* Follows the source's records by their headers, to know when END has come. */
static void track(struct peer *p, const uint8_t *buf, size_t n) {
        while (n > 0) {
                if (p->payload_left > 0) {
                        size_t k = p->payload_left < n ? (size_t) p->payload_left : n;
                        p->payload_left -= k;
                        buf += k;
                        n -= k;
                        continue;
                }
                size_t k = VHM_REC_HDR_SIZE - p->hdr_have < n ? VHM_REC_HDR_SIZE - p->hdr_have : n;
                memcpy(p->hdr + p->hdr_have, buf, k);
                p->hdr_have += k;
                buf += k;
                n -= k;
                if (p->hdr_have < VHM_REC_HDR_SIZE)
                        continue;
                uint16_t type;
                uint32_t len;
                memcpy(&type, p->hdr, 2);
                memcpy(&len, p->hdr + 4, 4);
                p->end_seen |= le16toh(type) == VHM_REC_END;
                p->payload_left = le32toh(len);
                p->hdr_have = 0;
        }
}

/* Writes what it can of the answer; false once it is all out (or cannot go). */
static bool answer_some(struct peer *p, size_t *off) {
        if (*off >= p->size)
                return false;
        ssize_t n = send(p->fd, p->answer + *off, p->size - *off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return true;
        if (n <= 0)
                return false;
        *off += (size_t) n;
        return *off < p->size;
}

static void *peer_main(void *arg) {
        struct peer *p = arg;
        size_t off = 0;
        bool writing = false, answered = false;
        for (;;) {
                if (!answered && (p->answer_at_once || p->end_seen)) {
                        writing = true;
                        answered = true;
                }
                if (writing && !answer_some(p, &off)) {
                        writing = false;
                        if (p->close_after)
                                break;
                        shutdown(p->fd, SHUT_WR); /* the source sees the answer end */
                }
                struct pollfd pfd = { p->fd, (short) (POLLIN | (writing ? POLLOUT : 0)), 0 };
                if (poll(&pfd, 1, 5000) <= 0)
                        break; /* the source is bounded by its timeout; this only stops a bug from hanging */
                if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
                        continue;
                uint8_t buf[16384];
                ssize_t n = read(p->fd, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break; /* the source closed: its call has returned */
                track(p, buf, (size_t) n);
        }
        close(p->fd);
        return NULL;
}

static struct vhm_vm *source_vm(void) {
        static const struct { uint64_t gpa, size; } layout[2] = { { 0, 64u << 10 }, { 1u << 20, 32u << 10 } };
        struct vhm_vm *vm;
        if (vhm_vm_new("fuzz-src", &vm) < 0)
                return NULL;
        for (unsigned i = 0; i < 2; i++) {
                int fd = memfd_create("fuzz-stream-source", MFD_CLOEXEC | MFD_ALLOW_SEALING);
                bool ok = fd >= 0 && ftruncate(fd, (off_t) layout[i].size) == 0 &&
                          fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0;
                /* A page of data in each region, so that PAGES carries data as well as zero flags. */
                ok = ok && pwrite(fd, "guest", 5, 4096) == 5;
                struct vhm_region_spec spec = { fd, layout[i].gpa, layout[i].size, 0 };
                ok = ok && vhm_vm_add_region(vm, &spec) == 0;
                if (fd >= 0)
                        close(fd);
                if (!ok) {
                        vhm_vm_free(vm);
                        return NULL;
                }
        }
        return vm;
}

int fuzz_stream_source_one(const uint8_t *data, size_t size, struct vhm_migration_stats *st) {
        struct peer peer = { .answer_at_once = size > 0 && (data[0] & 1), .close_after = size > 0 && (data[0] & 2) };
        if (size > 0)
                data++, size--;
        peer.answer = data;
        peer.size = size;
        struct vhm_vm *vm = source_vm();
        int sv[2];
        if (!vm || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                abort();
        peer.fd = sv[1];
        pthread_t thread;
        if (pthread_create(&thread, NULL, peer_main, &peer) != 0)
                abort();
        struct vhm_migrate_options o = { .timeout_ms = TIMEOUT_MS };
        *st = (struct vhm_migration_stats){ 0 };
        int r = vhm_migrate_to(vm, NULL, NULL, 0, sv[0], fuzz_token, &o, st);
        pthread_join(thread, NULL);
        vhm_vm_free(vm);
        /* 0 is a commit and only that; a failure says what became of the source, and why. */
        bool consistent = r == 0 ? st->state == VHM_MIGRATION_COMPLETED && st->error[0] == '\0'
                                 : (st->state == VHM_MIGRATION_FAILED ||
                                    st->state == VHM_MIGRATION_POSTMIGRATE_UNKNOWN) &&
                                           st->error[0] != '\0';
        if (!consistent)
                abort();
        return r;
}

/* ---- a destination's answers, for the smoke test ---- */

static size_t put_record(uint8_t *buf, size_t cap, uint16_t type, const void *payload, uint32_t len) {
        if (cap < VHM_REC_HDR_SIZE + len)
                return 0;
        uint16_t t = htole16(type), f = 0;
        uint32_t l = htole32(len);
        memcpy(buf, &t, 2);
        memcpy(buf + 2, &f, 2);
        memcpy(buf + 4, &l, 4);
        if (len)
                memcpy(buf + VHM_REC_HDR_SIZE, payload, len);
        return VHM_REC_HDR_SIZE + len;
}

size_t fuzz_stream_source_sample(uint8_t *buf, size_t cap, enum fuzz_answer kind) {
        static const char reason[] = "DEVICE 0: the back-end offers fewer queue pairs";
        if (cap < 1)
                return 0;
        switch (kind) {
        case FUZZ_ANSWER_COMMITTED:
                buf[0] = 0;
                return 1 + put_record(buf + 1, cap - 1, VHM_REC_COMMITTED, NULL, 0);
        case FUZZ_ANSWER_ABORTED:
                buf[0] = 0;
                return 1 + put_record(buf + 1, cap - 1, VHM_REC_ABORTED, reason, sizeof(reason) - 1);
        default: /* ABORTED before HELLO has arrived, and gone: what a destination with the wrong layout does */
                buf[0] = 3;
                return 1 + put_record(buf + 1, cap - 1, VHM_REC_ABORTED, reason, sizeof(reason) - 1);
        }
}
