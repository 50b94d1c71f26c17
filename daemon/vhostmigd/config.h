/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd's configuration: SYSCONFDIR/vhostmig/vhostmigd.json, parsed strictly
 * (unknown keys, duplicate keys, wrong types, out-of-range values and
 * trailing garbage are errors naming the key).  Every setting has a built-in
 * default, so the daemon runs without a file.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* meson sets it from sysconfdir; this is only for a compiler run outside meson. */
#ifndef VHOSTMIGD_DEFAULT_CONFIG
#define VHOSTMIGD_DEFAULT_CONFIG "/etc/vhostmig/vhostmigd.json"
#endif

/* Back-end uids one allow-list may name, and VMs that may have their own list. */
#define CONFIG_MAX_UIDS        16
#define CONFIG_MAX_VM_POLICIES 64
#define CONFIG_VM_NAME_MAX     64
/* Probe calls that may run at once, at most. */
#define CONFIG_MAX_PROBES 64

struct config_uid_list {
        uid_t uid[CONFIG_MAX_UIDS];
        unsigned n;
};

/* "vms": { "NAME": { "backend_uids": [...] } } */
struct config_vm_policy {
        char name[CONFIG_VM_NAME_MAX];
        struct config_uid_list backend_uids;
};

/*
 * "libvirt": { "uri": ..., "keepalive_interval_s": ..., ... }: the event
 * watcher (libvirt-watch.h).  Read at start only: a reload keeps the
 * running watcher and says that a restart applies the change.
 */
#define CONFIG_LIBVIRT_URI_MAX 256
struct config_libvirt {
        char uri[CONFIG_LIBVIRT_URI_MAX]; /* "" (null in the file): the watcher is off */
        unsigned keepalive_interval_s, keepalive_count;
        unsigned reconnect_min_ms, reconnect_max_ms;
};

struct vhostmigd_config {
        unsigned request_timeout_ms;  /* per vhost-user request */
        unsigned monitor_interval_ms; /* how often connections are checked, reconnections tried */
        unsigned max_vms;
        unsigned max_probes;               /* Probe calls running at once; more are refused (Busy) */
        int log_level;                     /* syslog priority: messages above it are dropped */
        uint64_t max_guest_phys_addr;      /* no region may end above this guest-physical address */
        unsigned server_socket_mode;       /* permission bits of server-mode sockets */
        gid_t server_socket_group;         /* their group; (gid_t) -1 leaves the daemon's */
        char server_socket_group_name[64]; /* the name it was given by, for --check-config; "" otherwise */
        /* Back-end uids allowed on every device; empty: the first connection's uid. */
        struct config_uid_list backend_uids;
        struct config_vm_policy vm_policies[CONFIG_MAX_VM_POLICIES];
        unsigned n_vm_policies;
        struct config_libvirt libvirt;
};

void config_defaults(struct vhostmigd_config *cfg);

/*
 * Loads `path` over the defaults.  A missing file is fine when `optional`
 * (the default path); otherwise an error.  On failure `error` says what and
 * where, and *cfg is left at the defaults.
 */
int config_load(struct vhostmigd_config *cfg, const char *path, bool optional, char *error, size_t error_len);

/* Parses a JSON text (the file's contents); same rules. */
int config_parse(struct vhostmigd_config *cfg, const char *text, char *error, size_t error_len);

/* The effective configuration as a JSON document (caller frees). */
char *config_to_json(const struct vhostmigd_config *cfg);

/*
 * Log levels by the names systemd and syslog use ("emerg" .. "debug"), as
 * the configuration and org.freedesktop.LogControl1 spell them.
 * config_log_level_from_name returns the level or -EINVAL.
 */
int config_log_level_from_name(const char *name);
const char *config_log_level_name(int level);

/*
 * What differs between two configurations, in words ("max_probes 4 -> 2,
 * log_level \"info\" -> \"debug\""), "" when nothing does; NULL when out of
 * memory.  Caller frees.
 */
char *config_diff(const struct vhostmigd_config *old, const struct vhostmigd_config *new);

/* The back-end uids allowed for VM `name`: its own list if it has one, else the global one. */
const struct config_uid_list *config_backend_uids(const struct vhostmigd_config *cfg, const char *name);
