/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "daemon/vhostmigd/worker.h"

static void append(struct worker_job **head, struct worker_job **tail, struct worker_job *job) {
        job->next = NULL;
        if (*tail)
                (*tail)->next = job;
        else
                *head = job;
        *tail = job;
}

static struct worker_job *take_all(struct worker_job **head, struct worker_job **tail) {
        struct worker_job *list = *head;
        *head = *tail = NULL;
        return list;
}

static void *worker_main(void *arg) {
        struct worker *w = arg;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                while (!w->queue_head && !w->stopping)
                        pthread_cond_wait(&w->wake, &w->lock);
                if (!w->queue_head)
                        break;
                struct worker_job *job = w->queue_head;
                w->queue_head = job->next;
                if (!w->queue_head)
                        w->queue_tail = NULL;
                pthread_mutex_unlock(&w->lock);

                job->run(job);

                pthread_mutex_lock(&w->lock);
                append(&w->done_head, &w->done_tail, job);
                uint64_t one = 1;
                if (write(w->eventfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
                        fprintf(stderr, "worker %s: cannot signal completion: %m\n", w->name);
        }
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

static void complete_jobs(struct worker *w) {
        pthread_mutex_lock(&w->lock);
        struct worker_job *list = take_all(&w->done_head, &w->done_tail);
        pthread_mutex_unlock(&w->lock);

        while (list) {
                struct worker_job *next = list->next;
                pthread_mutex_lock(&w->lock);
                w->pending--;
                pthread_mutex_unlock(&w->lock);
                list->done(list);
                list = next;
        }
}

static int on_completion(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        (void) s;
        (void) revents;
        uint64_t n;
        if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
                return -errno;
        complete_jobs(userdata);
        return 0;
}

int worker_start(struct worker *w, sd_event *event, const char *name) {
        memset(w, 0, sizeof(*w));
        snprintf(w->name, sizeof(w->name), "%s", name);
        w->eventfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->eventfd < 0)
                return -errno;
        int r = sd_event_add_io(event, &w->source, w->eventfd, EPOLLIN, on_completion, w);
        if (r < 0) {
                close(w->eventfd);
                return r;
        }
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->wake, NULL);
        r = -pthread_create(&w->thread, NULL, worker_main, w);
        if (r < 0) {
                sd_event_source_unref(w->source);
                close(w->eventfd);
                return r;
        }
        /* Thread names are 15 characters at most. */
        (void) pthread_setname_np(w->thread, w->name);
        return 0;
}

void worker_submit(struct worker *w, struct worker_job *job) {
        pthread_mutex_lock(&w->lock);
        append(&w->queue_head, &w->queue_tail, job);
        w->pending++;
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
}

unsigned worker_pending(struct worker *w) {
        pthread_mutex_lock(&w->lock);
        unsigned n = w->pending;
        pthread_mutex_unlock(&w->lock);
        return n;
}

void worker_stop(struct worker *w) {
        pthread_mutex_lock(&w->lock);
        w->stopping = true;
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->thread, NULL);
        complete_jobs(w);
        sd_event_source_disable_unref(w->source);
        close(w->eventfd);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->wake);
}
