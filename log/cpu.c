/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* CPU feature detection for the harvest and bitmap fast paths. */
#include <pthread.h>

#include "log/log-priv.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

/* Some parts advertise RTM but abort every transaction (microcode
 * RTM_ALWAYS_ABORT, hypervisors); only trust it once one has committed. */
__attribute__((target("rtm"))) static bool rtm_probe(void) {
        static volatile int cell;

        for (int i = 0; i < 64; i++) {
                if (_xbegin() == _XBEGIN_STARTED) {
                        cell = cell + 1;
                        _xend();
                        return true;
                }
        }
        return false;
}

static void detect(struct vhm_log_cpu *c) {
        unsigned int a, b, cx, d;

        if (!__get_cpuid(1, &a, &b, &cx, &d))
                return;
        c->popcnt = cx & bit_POPCNT;
        c->cx16 = cx & bit_CMPXCHG16B;
        /* the builtin also checks that the OS saves the AVX state */
        __builtin_cpu_init();
        c->avx2 = c->popcnt && __builtin_cpu_supports("avx2");
        if (__get_cpuid_max(0, NULL) < 7)
                return;
        __cpuid_count(7, 0, a, b, cx, d);
        /* EBX bit 11: RTM; EDX bit 11: RTM_ALWAYS_ABORT */
        if ((b & (1u << 11)) && !(d & (1u << 11)) && c->popcnt)
                c->rtm = rtm_probe();
}
#else
static void detect(struct vhm_log_cpu *c) {
        (void) c;
}
#endif

static struct vhm_log_cpu cpu_features;
static bool avx2_present;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void detect_once(void) {
        detect(&cpu_features);
        avx2_present = cpu_features.avx2;
}

void vhm_log_priv_use_avx2(bool use) {
        (void) vhm_log_priv_cpu();
        cpu_features.avx2 = use && avx2_present;
}

const struct vhm_log_cpu *vhm_log_priv_cpu(void) {
        pthread_once(&cpu_once, detect_once);
        return &cpu_features;
}
