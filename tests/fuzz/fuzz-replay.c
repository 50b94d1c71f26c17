/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Replays a fuzz target's corpus in every build, without libFuzzer: each
 * argument is a file or a directory of files, each file one input given to
 * the target's LLVMFuzzerTestOneInput.  A crash fails the test (and the
 * sanitizer build checks memory); so does an input that leaves an fd open,
 * named, or a directory without inputs (a corpus that went missing).
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/common/fd-count.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
        FILE *f = fopen(path, "re");
        if (!f) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return -1;
        }
        /* libFuzzer hands over a buffer of exactly the input's size: ASan sees reads past it. */
        struct stat sb;
        size_t size = fstat(fileno(f), &sb) == 0 ? (size_t) sb.st_size : 0;
        uint8_t *data = malloc(size ? size : 1);
        if (!data || fread(data, 1, size, f) != size) {
                fprintf(stderr, "%s: cannot read\n", path);
                fclose(f);
                free(data);
                return -1;
        }
        fclose(f);
        int before = count_open_fds();
        LLVMFuzzerTestOneInput(data, size);
        free(data);
        int after = count_open_fds();
        if (after != before) {
                fprintf(stderr, "%s: %d fds open before, %d after\n", path, before, after);
                return -1;
        }
        return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
        return strcmp((*a)->d_name, (*b)->d_name);
}

/* Every regular file of the directory, in name order; the count, or -1. */
static int replay_dir(const char *dir) {
        struct dirent **names;
        int n = scandir(dir, &names, NULL, by_name), done = 0, failed = 0;
        if (n < 0) {
                fprintf(stderr, "%s: %s\n", dir, strerror(errno));
                return -1;
        }
        for (int i = 0; i < n; i++) {
                char path[4096];
                struct stat sb;
                snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
                if (names[i]->d_name[0] != '.' && stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
                        failed |= replay_file(path) < 0;
                        done++;
                }
                free(names[i]);
        }
        free(names);
        return failed ? -1 : done;
}

int main(int argc, char **argv) {
        int rc = 0;
        if (argc < 2) {
                fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
                return 2;
        }
        for (int i = 1; i < argc; i++) {
                struct stat sb;
                if (stat(argv[i], &sb) < 0) {
                        fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
                        rc = 1;
                } else if (S_ISDIR(sb.st_mode)) {
                        int n = replay_dir(argv[i]);
                        if (n <= 0) {
                                fprintf(stderr, "%s: %s\n", argv[i], n == 0 ? "no inputs" : "failed");
                                rc = 1;
                        } else {
                                printf("%s: %d inputs replayed\n", argv[i], n);
                        }
                } else {
                        rc |= replay_file(argv[i]) < 0;
                }
        }
        return rc;
}
