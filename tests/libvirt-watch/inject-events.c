/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * An LD_PRELOAD module for tests: it lets a test deliver to a running
 * vhostmigd the domain events that libvirt's test driver cannot produce
 * (the MIGRATED lifecycle details, migration iterations, a completed job
 * with its downtime).  It wraps virConnectDomainEventRegisterAny to learn
 * the callbacks the watcher registers, and a thread of its own reads lines
 * from the FIFO named by VHOSTMIG_INJECT_FIFO and calls those callbacks with
 * the domain looked up on the watcher's connection, on that thread, as the
 * watcher's exported callbacks allow (libvirt-watch.h).  Lines:
 *
 *   lifecycle DOMAIN EVENT DETAIL     virDomainEventType and its detail, as numbers
 *   iteration DOMAIN N
 *   job DOMAIN DOWNTIME_MS
 *
 * Nothing of vhostmigd is changed or linked: without the variable the
 * module only passes the registrations on.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

enum {
        INJECT_LIFECYCLE,
        INJECT_ITERATION,
        INJECT_JOB,
        INJECT_N
};

static struct {
        pthread_mutex_t lock;
        virConnectPtr conn; /* the last connection that registered */
        virConnectDomainEventGenericCallback cb[INJECT_N];
        void *opaque[INJECT_N];
} reg = { .lock = PTHREAD_MUTEX_INITIALIZER };

static int slot_of(int event_id) {
        switch (event_id) {
        case VIR_DOMAIN_EVENT_ID_LIFECYCLE:
                return INJECT_LIFECYCLE;
        case VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION:
                return INJECT_ITERATION;
        case VIR_DOMAIN_EVENT_ID_JOB_COMPLETED:
                return INJECT_JOB;
        default:
                return -1;
        }
}

typedef int (*register_fn)(virConnectPtr, virDomainPtr, int, virConnectDomainEventGenericCallback, void *,
                           virFreeCallback);

int virConnectDomainEventRegisterAny(virConnectPtr conn, virDomainPtr dom, int event_id,
                                     virConnectDomainEventGenericCallback cb, void *opaque, virFreeCallback freecb) {
        register_fn real = (register_fn) dlsym(RTLD_NEXT, "virConnectDomainEventRegisterAny");
        if (!real)
                return -1;
        int r = real(conn, dom, event_id, cb, opaque, freecb);
        int slot = slot_of(event_id);
        if (r >= 0 && slot >= 0) {
                pthread_mutex_lock(&reg.lock);
                reg.conn = conn;
                reg.cb[slot] = cb;
                reg.opaque[slot] = opaque;
                pthread_mutex_unlock(&reg.lock);
        }
        return r;
}

static void deliver_job(virConnectPtr conn, virDomainPtr dom, virConnectDomainEventGenericCallback cb, void *opaque,
                        unsigned long long downtime_ms) {
        virTypedParameterPtr params = NULL;
        int n = 0, max = 0;
        if (virTypedParamsAddULLong(&params, &n, &max, VIR_DOMAIN_JOB_DOWNTIME, downtime_ms) == 0 &&
            virTypedParamsAddBoolean(&params, &n, &max, VIR_DOMAIN_JOB_SUCCESS, 1) == 0)
                ((virConnectDomainEventJobCompletedCallback) (void (*)(void)) cb)(conn, dom, params, n, opaque);
        else
                fprintf(stderr, "inject-events: cannot build the job's parameters\n");
        virTypedParamsFree(params, n);
}

static void deliver(const char *kind, const char *name, long a, long b) {
        int slot = strcmp(kind, "lifecycle") == 0   ? INJECT_LIFECYCLE
                   : strcmp(kind, "iteration") == 0 ? INJECT_ITERATION
                   : strcmp(kind, "job") == 0       ? INJECT_JOB
                                                    : -1;
        if (slot < 0) {
                fprintf(stderr, "inject-events: unknown event kind \"%s\"\n", kind);
                return;
        }
        pthread_mutex_lock(&reg.lock);
        virConnectPtr conn = reg.conn;
        virConnectDomainEventGenericCallback cb = reg.cb[slot];
        void *opaque = reg.opaque[slot];
        if (conn)
                virConnectRef(conn);
        pthread_mutex_unlock(&reg.lock);
        virDomainPtr dom = conn && cb ? virDomainLookupByName(conn, name) : NULL;
        if (!dom) {
                fprintf(stderr, "inject-events: %s %s: no connection or domain: %s\n", kind, name,
                        virGetLastErrorMessage());
        } else if (slot == INJECT_LIFECYCLE) {
                ((virConnectDomainEventCallback) (void (*)(void)) cb)(conn, dom, (int) a, (int) b, opaque);
        } else if (slot == INJECT_ITERATION) {
                ((virConnectDomainEventMigrationIterationCallback) (void (*)(void)) cb)(conn, dom, (int) a, opaque);
        } else {
                deliver_job(conn, dom, cb, opaque, (unsigned long long) a);
        }
        if (dom)
                virDomainFree(dom);
        if (conn)
                virConnectClose(conn);
}

static void *reader(void *arg) {
        FILE *f = arg;
        char line[512], kind[32], name[256];
        while (fgets(line, sizeof(line), f)) {
                long a = 0, b = 0;
                if (sscanf(line, "%31s %255s %ld %ld", kind, name, &a, &b) >= 3)
                        deliver(kind, name, a, b);
                else
                        fprintf(stderr, "inject-events: cannot read \"%s\"\n", line);
        }
        fclose(f);
        return NULL;
}

__attribute__((constructor)) static void inject_start(void) {
        const char *path = getenv("VHOSTMIG_INJECT_FIFO");
        if (!path)
                return;
        /* Read and write: the FIFO never reads EOF between the test's writers. */
        int fd = open(path, O_RDWR | O_CLOEXEC);
        FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
        /* The daemon takes its signals through sd-event on its main thread: none may land here. */
        sigset_t all, was;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &was);
        pthread_t t;
        int r = f ? pthread_create(&t, NULL, reader, f) : -1;
        pthread_sigmask(SIG_SETMASK, &was, NULL);
        if (r != 0) {
                fprintf(stderr, "inject-events: cannot read %s\n", path);
                if (f)
                        fclose(f);
                else if (fd >= 0)
                        close(fd);
                return;
        }
        pthread_detach(t);
}
