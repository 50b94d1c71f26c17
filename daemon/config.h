/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd's configuration: /etc/vhostmig/vhostmigd.json, parsed strictly
 * (unknown keys, wrong types, out-of-range values and trailing garbage are
 * errors naming the key).  Every setting has a built-in default, so the
 * daemon runs without a file.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define VHOSTMIGD_DEFAULT_CONFIG "/etc/vhostmig/vhostmigd.json"

struct vhostmigd_config {
        unsigned request_timeout_ms;   /* per vhost-user request */
        unsigned monitor_interval_ms;  /* how often connections are checked, reconnections tried */
        unsigned max_vms;
        int log_level;                 /* syslog priority: messages above it are dropped */
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
