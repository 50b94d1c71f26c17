/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Counting this process's open fds, to prove a code path leaks none. */
#pragma once

#include <dirent.h>

static inline int count_open_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        if (!d)
                return -1;
        int n = 0;
        struct dirent *de;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n - 1; /* the directory's own fd */
}
