/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vhostmigd's messages: the journal with structured fields, or stderr; the service status. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <sys/uio.h>
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

/* One "FIELD=value" for sd_journal_sendv, in buf; false (and nothing) when value is empty. */
static bool journal_field(struct iovec *iov, char *buf, size_t len, const char *field, const char *value) {
        if (!value || !*value)
                return false;
        int n = snprintf(buf, len, "%s=%s", field, value);
        *iov = (struct iovec) { .iov_base = buf, .iov_len = n < 0 ? 0 : (size_t) n >= len ? len - 1 : (size_t) n };
        return true;
}

/* Structured fields let `journalctl VHOSTMIG_VM=name` follow one VM; a field without a value is left out. */
static void log_to_journal_fields(int priority, const char *message_id, const char *vm, const char *device,
                                  const char *request, const char *message) {
        char f_message[1400], f_priority[16], f_id[64], f_vm[96], f_device[160], f_request[64];
        struct iovec iov[6];
        unsigned n = 0;
        char prio[4];
        snprintf(prio, sizeof(prio), "%d", priority);
        n += journal_field(&iov[n], f_message, sizeof(f_message), "MESSAGE", message);
        n += journal_field(&iov[n], f_priority, sizeof(f_priority), "PRIORITY", prio);
        n += journal_field(&iov[n], f_id, sizeof(f_id), "MESSAGE_ID", message_id);
        n += journal_field(&iov[n], f_vm, sizeof(f_vm), "VHOSTMIG_VM", vm);
        n += journal_field(&iov[n], f_device, sizeof(f_device), "VHOSTMIG_DEVICE", device);
        n += journal_field(&iov[n], f_request, sizeof(f_request), "VHOSTMIG_REQUEST", request);
        (void) sd_journal_sendv(iov, (int) n);
}

void daemon_log_full(int priority, const char *message_id, const struct vm_object *vm, const char *device,
                     uint32_t request, const char *fmt, ...) {
        if (log_daemon && priority > log_daemon->cfg.log_level)
                return;
        char text[1024], message[1400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        snprintf(message, sizeof(message), "%s%s%s%s%s", vm ? vm->name : "", vm ? ": " : "", device ? device : "",
                 device ? ": " : "", text);
        if (log_to_journal)
                log_to_journal_fields(priority, message_id, vm ? vm->name : NULL, device,
                                      request ? vhu_request_name(request) : NULL, message);
        else
                fprintf(stderr, "<%d>%s\n", priority, message);
}

void daemon_update_status(struct daemon *d) {
        sd_notifyf(false, "STATUS=Managing %u VM%s", d->nvms, d->nvms == 1 ? "" : "s");
}

