/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A harvest killed at any instruction loses no dirty bit: each bit is in the
 * log (or a VMM bitmap) or in the migration bitmap's memfd at every instant,
 * since both outlive the process in the fd store (log/harvest.c, "Merged
 * first, cleared after").
 *
 * Not by killing at random and hoping to hit the window: a child runs the
 * harvest under ptrace and this process single-steps it, checking after
 * every instruction, through shared mappings of the same memfds, that every
 * bit of the pattern is in the log or the bitmap.  Any instruction boundary
 * is where a SIGKILL can land, so a window of even one instruction (an
 * exchange that took bits out of the log before the store that ORs them
 * into the bitmap) is found, every time.  Each implementation in turn
 * (xchg, cas16, rtm where the CPU has them), the detached harvest, and the
 * VMM bitmaps' harvest in migrate/logging.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log/bitmap.h"
#include "log/dirty-log.h"
#include "migrate/logging.h"
#include "migrate/vm.h"
#include "tests/common/check.h"

/* Two 1 KiB chunks and a partial third: the chunk loop, the line loop and the tail all run. */
#define NWORDS   300u
#define NPAGES   (NWORDS * 64u)
#define MEM_SIZE ((uint64_t) NPAGES * 4096u)

/* Single words, whole pairs (cas16's compare-exchange), a dense line, a sparse spread. */
static void pattern(uint64_t *words) {
        memset(words, 0, NWORDS * sizeof(uint64_t));
        words[0] = 1;
        words[3] = UINT64_C(0x8000000000000001);
        words[8] = words[9] = UINT64_C(0xf0f0f0f0f0f0f0f0);
        for (unsigned w = 16; w < 24; w++)
                words[w] = ~UINT64_C(0);
        for (unsigned w = 40; w < NWORDS; w += 7)
                words[w] = UINT64_C(1) << (w % 64);
        words[NWORDS - 1] = UINT64_C(0x5555);
}

struct memfd_map {
        int fd;
        uint64_t *words;
        size_t len;
};

/* This process's own shared mapping of a memfd the child writes. */
static struct memfd_map map_memfd(int fd) {
        struct memfd_map m = { .fd = fd, .len = NWORDS * sizeof(uint64_t) };
        m.words = mmap(NULL, m.len, PROT_READ, MAP_SHARED, fd, 0);
        assert_true(m.words != MAP_FAILED);
        return m;
}

/* Every bit of want in source | bitmap; the first missing word, or -1. */
static long missing_word(const uint64_t *want, const struct memfd_map *source, const struct memfd_map *bitmap) {
        for (unsigned w = 0; w < NWORDS; w++) {
                uint64_t have = __atomic_load_n(&source->words[w], __ATOMIC_RELAXED) |
                                __atomic_load_n(&bitmap->words[w], __ATOMIC_RELAXED);
                if (want[w] & ~have)
                        return (long) w;
        }
        return -1;
}

/*
 * Runs harvest(arg) in a child, one instruction at a time, checking the
 * invariant at every stop; returns the number of instructions stepped.
 */
static unsigned long step_through(void (*harvest)(void *), void *arg, const uint64_t *want,
                                  const struct memfd_map *source, const struct memfd_map *bitmap) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0)
                        _exit(2);
                raise(SIGSTOP);
                harvest(arg);
                _exit(0); /* no exit handlers: a leak checker would need ptrace itself */
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSTOPPED(status));
        unsigned long steps = 0;
        for (;;) {
                long w = missing_word(want, source, bitmap);
                if (w >= 0) {
                        kill(pid, SIGKILL);
                        waitpid(pid, NULL, 0);
                        fail_msg("after %lu instructions word %ld's bits 0x%016llx are in neither the source nor the "
                                 "bitmap: a kill there loses them",
                                 steps, w, (unsigned long long) want[w]);
                }
                assert_int_equal(ptrace(PTRACE_SINGLESTEP, pid, NULL, NULL), 0);
                assert_int_equal(waitpid(pid, &status, 0), pid);
                if (WIFEXITED(status)) {
                        assert_int_equal(WEXITSTATUS(status), 0);
                        return steps;
                }
                assert_true(WIFSTOPPED(status) && WSTOPSIG(status) == SIGTRAP);
                steps++;
        }
}

/* ---- log/: vhm_log_harvest and vhm_log_harvest_detached -------------------------------------- */

struct log_run {
        struct vhm_log *log;
        struct vhm_bitmap *bm;
        bool detached;
};

static void run_log_harvest(void *arg) {
        struct log_run *r = arg;
        uint64_t n;
        int e = r->detached ? vhm_log_harvest_detached(r->log, r->bm, &n) : vhm_log_harvest(r->log, r->bm, &n);
        if (e < 0 || n == 0)
                _exit(3);
}

static void check_log_harvest(enum vhm_log_harvest_impl impl, bool detached) {
        uint64_t want[NWORDS];
        struct log_run r = { .detached = detached };
        assert_int_equal(vhm_log_new(MEM_SIZE, &r.log), 0);
        if (!detached && vhm_log_set_harvest_impl(r.log, impl) == -EOPNOTSUPP) {
                printf("  %s: not on this CPU\n", vhm_log_harvest_impl_name(impl));
                vhm_log_free(r.log);
                return;
        }
        assert_int_equal(vhm_bitmap_new_memfd(NPAGES, &r.bm), 0);
        pattern(want);
        for (uint64_t p = 0; p < NPAGES; p++)
                if (want[p / 64] & (UINT64_C(1) << (p % 64)))
                        assert_int_equal(vhm_log_mark_page(r.log, p), 0);
        struct memfd_map log = map_memfd(vhm_log_fd(r.log)), bm = map_memfd(vhm_bitmap_fd(r.bm));
        unsigned long steps = step_through(run_log_harvest, &r, want, &log, &bm);
        printf("  %s: %lu instructions, every bit in the log or the bitmap after each\n",
               detached ? "detached" : vhm_log_harvest_impl_name(vhm_log_get_harvest_impl(r.log)), steps);
        assert_true(steps > NWORDS);
        /* And the harvest did its work: the log empty, the bitmap the pattern. */
        for (unsigned w = 0; w < NWORDS; w++) {
                assert_int_equal(log.words[w], 0);
                assert_int_equal(bm.words[w], want[w]);
        }
        munmap(log.words, log.len);
        munmap(bm.words, bm.len);
        vhm_bitmap_free(r.bm);
        vhm_log_free(r.log);
}

static void xchg_harvest_never_holds_bits_alone(void **state) {
        (void) state;
        check_log_harvest(VHM_LOG_HARVEST_XCHG, false);
}

static void cas16_harvest_never_holds_bits_alone(void **state) {
        (void) state;
        check_log_harvest(VHM_LOG_HARVEST_CAS16, false);
}

static void rtm_harvest_never_holds_bits_alone(void **state) {
        (void) state;
        check_log_harvest(VHM_LOG_HARVEST_RTM, false);
}

static void detached_harvest_never_holds_bits_alone(void **state) {
        (void) state;
        check_log_harvest(VHM_LOG_HARVEST_AUTO, true);
}

/* ---- migrate/logging.c: the VMM bitmaps ------------------------------------------------------ */

static void run_logging_harvest(void *arg) {
        uint64_t n;
        if (vhm_logging_harvest(arg, &n) < 0 || n == 0)
                _exit(3);
}

static void vmm_bitmap_harvest_never_holds_bits_alone(void **state) {
        (void) state;
        uint64_t want[NWORDS];
        struct vhm_vm *vm = NULL;
        struct vhm_logging *lg = NULL;
        int mem = memfd_create("harvest-order-mem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        int vmm = memfd_create("harvest-order-vmm", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(mem >= 0 && vmm >= 0);
        assert_int_equal(ftruncate(mem, (off_t) MEM_SIZE), 0);
        assert_int_equal(ftruncate(vmm, NWORDS * sizeof(uint64_t)), 0);
        assert_int_equal(fcntl(mem, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        assert_int_equal(fcntl(vmm, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        assert_int_equal(vhm_vm_new("order", &vm), 0);
        struct vhm_region_spec s = { .guest_phys_addr = 0, .size = MEM_SIZE, .offset = 0, .fd = mem };
        assert_int_equal(vhm_vm_add_region(vm, &s), 0);
        assert_int_equal(vhm_logging_new(vm, &lg), 0);
        LOG_CHECK(lg, vhm_logging_add_bitmap(lg, vmm));
        LOG_CHECK(lg, vhm_logging_start(lg));
        /* The VMM's vCPUs write after logging started (start clears the bitmap). */
        pattern(want);
        uint64_t *v = mmap(NULL, NWORDS * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, vmm, 0);
        assert_true(v != MAP_FAILED);
        memcpy(v, want, sizeof(want));
        struct memfd_map src = { .fd = vmm, .words = v, .len = NWORDS * sizeof(uint64_t) };
        struct memfd_map bm = map_memfd(vhm_logging_bitmap_fd(lg));
        unsigned long steps = step_through(run_logging_harvest, lg, want, &src, &bm);
        printf("  VMM bitmap: %lu instructions, every bit in it or the migration bitmap after each\n", steps);
        for (unsigned w = 0; w < NWORDS; w++) {
                assert_int_equal(v[w], 0);
                assert_int_equal(bm.words[w], want[w]);
        }
        munmap(v, src.len);
        munmap(bm.words, bm.len);
        vhm_logging_free(lg);
        vhm_vm_free(vm);
        close(mem);
        close(vmm);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(xchg_harvest_never_holds_bits_alone),
                cmocka_unit_test(cas16_harvest_never_holds_bits_alone),
                cmocka_unit_test(rtm_harvest_never_holds_bits_alone),
                cmocka_unit_test(detached_harvest_never_holds_bits_alone),
                cmocka_unit_test(vmm_bitmap_harvest_never_holds_bits_alone),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
