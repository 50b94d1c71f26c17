/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vhostmigd's messages: the journal with structured fields, or stderr; the service status. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

#include "daemon/vhostmigd/daemon.h"
#include "proto/vhost-user-table.h"

static const struct daemon *log_daemon;   /* for the log level */
static bool log_to_journal;

void daemon_log_init(const struct daemon *d) {
        log_daemon = d;
        log_to_journal = getenv("JOURNAL_STREAM") != NULL;
}

/* ---- logging ------------------------------------------------------------------- */

void daemon_log_full(int priority, const struct vm_object *vm, const char *device, uint32_t request,
                     const char *fmt, ...) {
        if (log_daemon && priority > log_daemon->cfg.log_level)
                return;
        char text[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        if (log_to_journal) {
                /* Structured fields let `journalctl VHOSTMIG_VM=name` follow one VM. */
                sd_journal_send("MESSAGE=%s%s%s%s%s", vm ? vm->name : "", vm ? ": " : "",
                                device ? device : "", device ? ": " : "", text,
                                "PRIORITY=%i", priority,
                                "VHOSTMIG_VM=%s", vm ? vm->name : "",
                                "VHOSTMIG_DEVICE=%s", device ? device : "",
                                "VHOSTMIG_REQUEST=%s", request ? vhu_request_name(request) : "",
                                NULL);
                return;
        }
        fprintf(stderr, "<%d>%s%s%s%s%s\n", priority, vm ? vm->name : "", vm ? ": " : "",
                device ? device : "", device ? ": " : "", text);
}

void daemon_update_status(struct daemon *d) {
        sd_notifyf(false, "STATUS=Managing %u VM%s", d->nvms, d->nvms == 1 ? "" : "s");
}

