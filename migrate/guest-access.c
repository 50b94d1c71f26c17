/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>

#include "migrate/guest-access.h"

#define GUARD_PAGE 4096u

/* The access this thread is making: a fault in [lo, hi) jumps back to env. */
struct guard {
        sigjmp_buf env;
        uintptr_t lo, hi;
        struct guard *outer;
};

static _Thread_local struct guard *volatile armed;

static struct sigaction previous;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

/* Only a fault the kernel raised on this thread's armed range is ours. */
static bool ours(const siginfo_t *si) {
        const struct guard *g = armed;
        if (!g || si->si_code <= 0) /* SI_USER, SI_TKILL, SI_QUEUE: sent, not a fault */
                return false;
        uintptr_t a = (uintptr_t) si->si_addr;
        return a >= g->lo && a < g->hi;
}

/*
 * Not ours: do what would have happened without us.  The previous handler
 * (a sanitizer's, typically) gets it; with none, the default action kills
 * the process: a returning hardware fault re-executes the access and faults
 * again with SIG_DFL in place, a sent signal is sent again.
 */
static void chain(int sig, siginfo_t *si, void *uc) {
        int saved_errno = errno;
        if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction) {
                previous.sa_sigaction(sig, si, uc);
        } else if (!(previous.sa_flags & SA_SIGINFO) && previous.sa_handler != SIG_DFL &&
                   previous.sa_handler != SIG_IGN) {
                previous.sa_handler(sig);
        } else {
                /* SIG_IGN cannot ignore a fault (the access would fault forever): default it. */
                struct sigaction dfl = { .sa_handler = SIG_DFL };
                sigemptyset(&dfl.sa_mask);
                sigaction(sig, &dfl, NULL);
                if (si->si_code <= 0)
                        raise(sig);
        }
        errno = saved_errno;
}

static void on_sigbus(int sig, siginfo_t *si, void *uc) {
        if (ours(si)) {
                struct guard *g = armed;
                armed = g->outer;
                siglongjmp(g->env, 1);
        }
        chain(sig, si, uc);
}

static bool installed(void) {
        struct sigaction cur;
        return sigaction(SIGBUS, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus;
}

/*
 * Our handler must be the one in place when an access is armed.  It is
 * installed on first use; whoever replaced it since (a test harness that
 * restores the dispositions it found, a library installing its own) becomes
 * the handler we chain to.
 *
 * SA_NODEFER: SIGBUS is not blocked while the handler runs, so jumping out
 * of it leaves the signal mask as it was, and sigsetjmp need not save it.
 */
static int install(void) {
        if (installed())
                return 0;
        int r = 0;
        pthread_mutex_lock(&install_lock);
        if (!installed()) {
                struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_NODEFER };
                struct sigaction old;
                sigemptyset(&sa.sa_mask);
                if (sigaction(SIGBUS, &sa, &old) < 0)
                        r = -errno;
                else
                        previous = old;
        }
        pthread_mutex_unlock(&install_lock);
        return r;
}

enum access {
        ACCESS_READ,
        ACCESS_WRITE,
        ACCESS_LOAD_U16_ACQUIRE,
        ACCESS_CALL,
};

/* What vhm_guarded_call runs over the armed range. */
struct call {
        void (*fn)(const void *guest, size_t len, void *arg);
        void *arg;
};

/*
 * The one place guest memory is touched.  The armed range is widened to
 * whole pages: a fault is reported for the page, and nothing else this
 * thread does while armed touches it.
 */
static int guarded(enum access op, volatile void *guest, void *local, size_t len) {
        if (len == 0)
                return 0;
        int r = install();
        if (r < 0)
                return r;
        struct guard g = {
                .lo = (uintptr_t) guest & ~(uintptr_t) (GUARD_PAGE - 1),
                .hi = (((uintptr_t) guest + len - 1) | (GUARD_PAGE - 1)) + 1,
                .outer = armed,
        };
        if (sigsetjmp(g.env, 0))
                return -EIO; /* the handler already disarmed */
        armed = &g;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        switch (op) {
        case ACCESS_READ:
                memcpy(local, (const void *) guest, len);
                break;
        case ACCESS_WRITE:
                memcpy((void *) guest, local, len);
                break;
        case ACCESS_LOAD_U16_ACQUIRE:
                *(uint16_t *) local = __atomic_load_n((const uint16_t *) guest, __ATOMIC_ACQUIRE);
                break;
        case ACCESS_CALL:
                ((struct call *) local)->fn((const void *) guest, len, ((struct call *) local)->arg);
                break;
        }
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        armed = g.outer;
        return 0;
}

int vhm_guarded_read(void *dst, const volatile void *src, size_t len) {
        return guarded(ACCESS_READ, (volatile void *) src, dst, len);
}

int vhm_guarded_write(volatile void *dst, const void *src, size_t len) {
        return guarded(ACCESS_WRITE, dst, (void *) src, len);
}

int vhm_guarded_load_u16_acquire(const volatile uint16_t *src, uint16_t *out) {
        if ((uintptr_t) src % sizeof(uint16_t))
                return -EINVAL;
        return guarded(ACCESS_LOAD_U16_ACQUIRE, (volatile void *) src, out, sizeof(*out));
}

int vhm_guarded_call(const volatile void *guest, size_t len, void (*fn)(const void *guest, size_t len, void *arg),
                     void *arg) {
        struct call c = { fn, arg };
        return guarded(ACCESS_CALL, (volatile void *) guest, &c, len);
}
