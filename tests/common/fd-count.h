/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Counting a process's open fds, to prove a code path leaks none. */
#pragma once

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

/* Open fds of `pid` (0: this process, not counting the directory being read), or -1. */
static inline int count_process_fds(pid_t pid) {
        char path[64];
        if (pid > 0)
                snprintf(path, sizeof(path), "/proc/%d/fd", (int) pid);
        else
                snprintf(path, sizeof(path), "/proc/self/fd");
        DIR *d = opendir(path);
        if (!d)
                return -1;
        int n = 0;
        struct dirent *de;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return pid > 0 ? n : n - 1;
}

static inline int count_open_fds(void) {
        return count_process_fds(0);
}

/*
 * Shared memory mappings of this process: the lines of /proc/self/maps that
 * map a memfd or a /dev/shm file (guest memory, dirty logs), or -1.  Thread
 * stacks and heap arenas come and go; these are what a leak would keep.
 */
static inline int count_shared_mappings(void) {
        FILE *f = fopen("/proc/self/maps", "re");
        if (!f)
                return -1;
        char line[512];
        int n = 0;
        while (fgets(line, sizeof(line), f))
                if (strstr(line, " /memfd:") || strstr(line, " /dev/shm/"))
                        n++;
        fclose(f);
        return n;
}
