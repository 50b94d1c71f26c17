/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Scope-bound release, systemd style: a variable declared _cleanup_free_ is
 * freed, one declared _cleanup_close_ closed, when it goes out of scope;
 * steal it (TAKE_PTR, TAKE_FD) to keep it.  sd-bus objects use
 * _cleanup_(sd_bus_message_unrefp), _cleanup_(sd_bus_error_free) and
 * friends, which sd-bus.h provides.
 */
#pragma once

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void freep(void *p) {
        free(*(void **) p);
}

static inline void closep(int *fd) {
        if (*fd >= 0) {
                int saved = errno; /* a cleanup must not change what the caller reports */
                close(*fd);
                errno = saved;
        }
}

#define _cleanup_free_  _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)

/* Takes ownership out of a _cleanup_ variable: it is not released at the end of the scope. */
#define TAKE_PTR(p)                     \
        ({                              \
                __typeof__(p) p_ = (p); \
                (p) = NULL;             \
                p_;                     \
        })
#define TAKE_FD(fd)             \
        ({                      \
                int fd_ = (fd); \
                (fd) = -1;      \
                fd_;            \
        })

/* A struct member's container. */
#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))
