/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The API's argument rules, each checked in one place for the daemon and
 * its clients.  Each returns 0 or a negative errno, and on failure writes
 * why (without the argument's name: the caller prefixes it) into `why`.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VALIDATE_VM_NAME_MAX 63
#define VALIDATE_MTU_MIN     68
#define VALIDATE_SOCKET_MAX  107 /* sun_path holds 108 bytes with the NUL */
#define VALIDATE_MAC_LEN     17  /* "xx:xx:xx:xx:xx:xx" */

/* 1..63 characters of [A-Za-z0-9_.-]. */
int validate_vm_name(const char *name, char *why, size_t len);
/* Exactly six groups of two hex digits separated by ':'; mac may be NULL. */
int validate_mac(const char *s, uint8_t mac[6], char *why, size_t len);
/* 68..65535 (0, "unset", is the caller's business). */
int validate_mtu(unsigned mtu, char *why, size_t len);
/* An eventfd of this process. */
int validate_eventfd(int fd, char *why, size_t len);
/* An absolute path that fits a Unix socket address. */
int validate_socket_path(const char *path, char *why, size_t len);
