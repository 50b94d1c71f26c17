/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What every job kind shares: queueing on the VM's worker, and completing
 * on the event loop (see jobs.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "daemon/vhostmigd/jobs.h"
#include "daemon/vhostmigd/restart.h"

static void job_run(struct worker_job *base);
static void job_done(struct worker_job *base);

struct vm_job *job_new(struct vm_object *o, const struct job_ops *ops, sd_bus_message *call) {
        struct vm_job *j = calloc(1, sizeof(*j));
        if (!j)
                return NULL;
        j->base.run = job_run;
        j->base.done = job_done;
        j->ops = ops;
        j->vm = o;
        j->call = call ? sd_bus_message_ref(call) : NULL;
        j->timeout_ms = o->daemon->cfg.request_timeout_ms;
        return j;
}

void job_submit(struct vm_job *j) {
        worker_submit(&j->vm->worker, &j->base);
}

void job_free(struct vm_job *j) {
        if (!j)
                return;
        sd_bus_message_unref(j->call);
        free(j);
}

int job_fail(struct vm_job *j, int err, const char *error_name, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->error, sizeof(j->error), fmt, ap);
        va_end(ap);
        j->result = err;
        j->error_name = error_name;
        return err;
}

static void job_run(struct worker_job *base) {
        struct vm_job *j = (struct vm_job *) base;
        j->ops->run(j);
        if (j->ops->releases_vm)
                return;
        vm_refresh(j->vm);
        restart_capture(j->vm);
}

/* A method's outcome is the object's LastError: a failure sets it, a success clears it. */
static void note_outcome(struct vm_job *j) {
        if (!j->call)
                return;
        const char *error = j->result < 0 ? j->error : "";
        if (j->ops->device_method && j->device && !j->device->removed)
                device_set_last_error(j->device, error);
        else if (!j->ops->device_method)
                vm_set_last_error(j->vm, error);
}

/* A back-end's failure is the daemon's news; a caller's mistake is only the caller's. */
static void log_failure(struct vm_job *j) {
        bool backend = j->error_name && (strcmp(j->error_name, VHOSTMIG_ERROR_BACKEND) == 0);
        daemon_log_full(backend ? LOG_WARNING : LOG_INFO, NULL, j->vm, j->device ? j->device->socket : NULL, j->request,
                        "%s: %s", j->ops->name, j->error);
}

static void answer(struct vm_job *j) {
        if (!j->call)
                return;
        int r;
        if (j->result < 0)
                r = sd_bus_reply_method_errorf(j->call, j->error_name, "%s", j->error);
        else if (j->ops->reply)
                r = j->ops->reply(j);
        else
                r = sd_bus_reply_method_return(j->call, NULL);
        if (r < 0)
                daemon_log(LOG_DEBUG, j->vm, NULL, "%s: cannot answer: %s", j->ops->name, strerror(-r));
}

static void job_done(struct worker_job *base) {
        struct vm_job *j = (struct vm_job *) base;
        struct vm_object *o = j->vm;

        if (j->ops->done)
                j->ops->done(j);
        if (j->result < 0)
                log_failure(j);
        note_outcome(j);
        /* Only now: the message above still names the device. */
        if (j->free_device) {
                device_object_free(j->device);
                j->device = NULL;
        }
        /*
         * What changed is published before the answer: a caller that reads a
         * property (StateChangeTimestamp, say) once its call returned sees it
         * changed no later than the return.
         */
        if (!j->ops->releases_vm) {
                vm_publish(o);
                restart_vm_changed(o);
        }
        answer(j);
        job_free(j);
}
