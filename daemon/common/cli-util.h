/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What the command-line programs share: error messages, usage errors, number parsing, the terminal. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* Exit status for usage errors, the same in every program. */
#define CLI_EXIT_USAGE 2

/*
 * "<program>: <message>" on stderr, the program being
 * program_invocation_short_name (never its path), so that every message of
 * a program carries the same prefix.
 */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "<program>: <message>" and a pointer to --help on stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * The same for one command of a program with commands:
 * "<program>: <command>: <message>" and "Try '<program> <command> --help'.".
 */
int cli_command_usage_error(const char *command, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Decimal or 0x hexadecimal; with `suffix`, an optional K, M, G or T (powers
 * of 1024, "KiB"/"KB" spellings accepted).  -EINVAL for anything else,
 * -ERANGE when it does not fit 64 bits.
 */
int cli_parse_u64(const char *s, bool suffix, uint64_t *ret);

/*
 * Columns to wrap text at: the terminal's width when standard output is
 * one, else $COLUMNS when it is a number, else 80.  Never below 40.
 */
unsigned cli_columns(void);
