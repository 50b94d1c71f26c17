/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What the command-line programs share: usage errors and number parsing. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* Exit status for usage errors, the same in every program. */
#define CLI_EXIT_USAGE 2

/* "<program>: <message>" and a pointer to --help on stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Decimal or 0x hexadecimal; with `suffix`, an optional K, M, G or T (powers
 * of 1024, "KiB"/"KB" spellings accepted).  -EINVAL for anything else,
 * -ERANGE when it does not fit 64 bits.
 */
int cli_parse_u64(const char *s, bool suffix, uint64_t *ret);
