/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A worker thread with a job queue.  vhost-user requests block (for at most
 * the request timeout), so each VM runs them on its own worker: a hung
 * back-end then delays only its VM, never the event loop, D-Bus answers or
 * other VMs.  A job runs on the worker and completes on the event loop
 * thread, woken through an eventfd.
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>

#include <systemd/sd-event.h>

struct worker_job;
typedef void (*worker_fn)(struct worker_job *job);

struct worker_job {
        worker_fn run;  /* on the worker thread */
        worker_fn done; /* on the event loop thread, then the job is the callee's to free */
        void *userdata;
        struct worker_job *next;
};

struct worker {
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        struct worker_job *queue_head, *queue_tail; /* to run */
        struct worker_job *done_head, *done_tail;   /* to complete */
        unsigned pending;                           /* queued or running */
        bool stopping;
        int eventfd;
        sd_event_source *source;
        char name[16];
};

int worker_start(struct worker *w, sd_event *event, const char *name);
/* Queues a job; never blocks. */
void worker_submit(struct worker *w, struct worker_job *job);
/* Jobs queued or running (event loop thread). */
unsigned worker_pending(struct worker *w);
/* Lets queued jobs finish, joins the thread, completes what is left. */
void worker_stop(struct worker *w);
