/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd's messages: the journal with structured fields, or stderr; the
 * service status; org.freedesktop.LogControl1, which lets `systemctl
 * service-log-level vhostmigd debug` change the level of a running daemon.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
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

#define LOG_CONTROL_PATH      "/org/freedesktop/LogControl1"
#define LOG_CONTROL_INTERFACE "org.freedesktop.LogControl1"
#define SYSLOG_IDENTIFIER     "vhostmigd"

/*
 * The logging state of the process, not of a daemon object: worker threads
 * log too, and the level may change under them (reload, LogControl1), hence
 * atomics.
 */
enum log_target {
        LOG_TARGET_AUTO,
        LOG_TARGET_JOURNAL,
        LOG_TARGET_CONSOLE,
        LOG_TARGET_NULL,
        LOG_TARGET_MAX
};

static const char *const target_names[LOG_TARGET_MAX] = {
        [LOG_TARGET_AUTO] = "auto",
        [LOG_TARGET_JOURNAL] = "journal",
        [LOG_TARGET_CONSOLE] = "console",
        [LOG_TARGET_NULL] = "null",
};

static atomic_int log_max_level = LOG_INFO;
static atomic_int log_target = LOG_TARGET_AUTO;
static bool under_journal; /* stderr is a journal stream: "auto" means the journal */

void daemon_log_init(int level) {
        under_journal = getenv("JOURNAL_STREAM") != NULL;
        daemon_log_set_level(level);
}

void daemon_log_set_level(int level) {
        atomic_store(&log_max_level, level);
}

int daemon_log_get_level(void) {
        return atomic_load(&log_max_level);
}

/* ---- logging ------------------------------------------------------------------- */

/* One "FIELD=value" for sd_journal_sendv, in buf; false (and nothing) when value is empty. */
static bool journal_field(struct iovec *iov, char *buf, size_t len, const char *field, const char *value) {
        if (!value || !*value)
                return false;
        int n = snprintf(buf, len, "%s=%s", field, value);
        *iov = (struct iovec){ .iov_base = buf, .iov_len = n < 0 ? 0 : (size_t) n >= len ? len - 1 : (size_t) n };
        return true;
}

/* Structured fields let `journalctl VHOSTMIG_VM=name` follow one VM; a field without a value is left out. */
static void log_to_journal_fields(int priority, const char *message_id, const char *vm, const char *device,
                                  const char *request, const char *message) {
        char f_message[1400], f_priority[16], f_ident[64], f_id[64], f_vm[96], f_device[160], f_request[64];
        struct iovec iov[7];
        unsigned n = 0;
        char prio[4];
        snprintf(prio, sizeof(prio), "%d", priority);
        n += journal_field(&iov[n], f_message, sizeof(f_message), "MESSAGE", message);
        n += journal_field(&iov[n], f_priority, sizeof(f_priority), "PRIORITY", prio);
        n += journal_field(&iov[n], f_ident, sizeof(f_ident), "SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER);
        n += journal_field(&iov[n], f_id, sizeof(f_id), "MESSAGE_ID", message_id);
        n += journal_field(&iov[n], f_vm, sizeof(f_vm), "VHOSTMIG_VM", vm);
        n += journal_field(&iov[n], f_device, sizeof(f_device), "VHOSTMIG_DEVICE", device);
        n += journal_field(&iov[n], f_request, sizeof(f_request), "VHOSTMIG_REQUEST", request);
        (void) sd_journal_sendv(iov, (int) n);
}

static enum log_target effective_target(void) {
        enum log_target t = atomic_load(&log_target);
        if (t == LOG_TARGET_AUTO)
                return under_journal ? LOG_TARGET_JOURNAL : LOG_TARGET_CONSOLE;
        return t;
}

void daemon_log_full(int priority, const char *message_id, const struct vm_object *vm, const char *device,
                     uint32_t request, const char *fmt, ...) {
        enum log_target target = effective_target();
        if (priority > atomic_load(&log_max_level) || target == LOG_TARGET_NULL)
                return;
        char text[1024], message[1400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        snprintf(message, sizeof(message), "%s%s%s%s%s", vm ? vm->name : "", vm ? ": " : "", device ? device : "",
                 device ? ": " : "", text);
        if (target == LOG_TARGET_JOURNAL)
                log_to_journal_fields(priority, message_id, vm ? vm->name : NULL, device,
                                      request ? vhu_request_name(request) : NULL, message);
        else
                fprintf(stderr, "<%d>%s\n", priority, message);
}

void daemon_update_status(struct daemon *d) {
        sd_notifyf(false, "STATUS=Managing %u VM%s", d->nvms, d->nvms == 1 ? "" : "s");
}

/* ---- org.freedesktop.LogControl1 ----------------------------------------------------- */

static int get_log_level(sd_bus *bus, const char *path, const char *interface, const char *property,
                         sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        (void) bus;
        (void) path;
        (void) interface;
        (void) property;
        (void) userdata;
        (void) error;
        return sd_bus_message_append(reply, "s", config_log_level_name(daemon_log_get_level()));
}

/* A string property's new value, from root only. */
static int read_root_string(sd_bus_message *value, const char **out, sd_bus_error *error) {
        int r = daemon_check_root(value, error);
        return r < 0 ? r : sd_bus_message_read(value, "s", out);
}

static int set_log_level(sd_bus *bus, const char *path, const char *interface, const char *property,
                         sd_bus_message *value, void *userdata, sd_bus_error *error) {
        (void) bus;
        (void) path;
        (void) interface;
        (void) property;
        (void) userdata;
        const char *name;
        int r = read_root_string(value, &name, error);
        if (r < 0)
                return r;
        int level = config_log_level_from_name(name);
        if (level < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "LogLevel: \"%s\" is not one of emerg, alert, crit, err, warning, notice, "
                                         "info, debug",
                                         name);
        int old = daemon_log_get_level();
        /* Said at the more verbose of the two levels, so that it is seen whichever way the level moves. */
        daemon_log_set_level(level > old ? level : old);
        daemon_log(LOG_NOTICE, NULL, NULL, "log level %s (was %s), set over D-Bus", name, config_log_level_name(old));
        daemon_log_set_level(level);
        return 0;
}

static int get_log_target(sd_bus *bus, const char *path, const char *interface, const char *property,
                          sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        (void) bus;
        (void) path;
        (void) interface;
        (void) property;
        (void) userdata;
        (void) error;
        return sd_bus_message_append(reply, "s", target_names[atomic_load(&log_target)]);
}

static int set_log_target(sd_bus *bus, const char *path, const char *interface, const char *property,
                          sd_bus_message *value, void *userdata, sd_bus_error *error) {
        (void) bus;
        (void) path;
        (void) interface;
        (void) property;
        (void) userdata;
        const char *name;
        int r = read_root_string(value, &name, error);
        if (r < 0)
                return r;
        for (int t = 0; t < LOG_TARGET_MAX; t++)
                if (strcmp(name, target_names[t]) == 0) {
                        atomic_store(&log_target, t);
                        daemon_log(LOG_NOTICE, NULL, NULL, "log target %s, set over D-Bus", name);
                        return 0;
                }
        /* systemd's kmsg and syslog targets are not implemented: the journal has the structured fields. */
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                 "LogTarget: \"%s\" is not one of auto, journal, console, null", name);
}

static int get_syslog_identifier(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        (void) bus;
        (void) path;
        (void) interface;
        (void) property;
        (void) userdata;
        (void) error;
        return sd_bus_message_append(reply, "s", SYSLOG_IDENTIFIER);
}

/* As systemd's own daemons export it (src/shared/bus-log-control-api.c): no change signals. */
static const sd_bus_vtable log_control_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_WRITABLE_PROPERTY("LogLevel", "s", get_log_level, set_log_level, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("LogTarget", "s", get_log_target, set_log_target, 0, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("SyslogIdentifier", "s", get_syslog_identifier, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_VTABLE_END,
};

int log_control_register(struct daemon *d) {
        return sd_bus_add_object_vtable(d->bus, NULL, LOG_CONTROL_PATH, LOG_CONTROL_INTERFACE, log_control_vtable, d);
}
