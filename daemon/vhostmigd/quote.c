/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "daemon/vhostmigd/quote.h"

#include <json-c/json.h>
#include <stdio.h>

const char *quoted(const char *s, char buf[static QUOTED_MAX]) {
        json_object *str = json_object_new_string(s);
        const char *q = str ? json_object_to_json_string_ext(str,
                                                             JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
                            : NULL;
        snprintf(buf, QUOTED_MAX, "%s", q ? q : "(a string that could not be quoted: out of memory)");
        json_object_put(str);
        return buf;
}
