/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * A string someone else chose (a configuration key, a D-Bus caller's option
 * key) as it goes into an error: a JSON string escaped by json-c and cut to
 * QUOTED_MAX, never as it is, since a newline or control character in it
 * would otherwise start a line of its own in the log.  Returns buf.
 */
#define QUOTED_MAX 160
const char *quoted(const char *s, char buf[static QUOTED_MAX]);
