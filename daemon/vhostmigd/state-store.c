/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon/common/cleanup.h"
#include "daemon/vhostmigd/state-store.h"

#define STATE_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

struct state_store {
        bool enabled;
        uint64_t generation; /* of the last state published */
        bool slot_b;         /* the last state went under STATE_STORE_SLOT_B */
        bool published;
};

struct state_restored {
        json_object *body;
        uint64_t generation;
        size_t n;
        int *fds;
        char **names;
};

int state_store_new(struct state_store **out) {
        struct state_store *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        /*
         * $FDSTORE (systemd 254 and later, or the unit) says the manager keeps
         * fds: a NOTIFY_SOCKET alone may be a reader that never takes them, and
         * a full datagram queue would block every notification.
         */
        const char *e = getenv("NOTIFY_SOCKET"), *max = getenv("FDSTORE");
        s->enabled = e && *e && max && strtoul(max, NULL, 10) > 0;
        *out = s;
        return 0;
}

void state_store_free(struct state_store *s) {
        free(s);
}

bool state_store_enabled(const struct state_store *s) {
        return s && s->enabled;
}

/* ---- names ------------------------------------------------------------------ */

/* sd_pid_notify's FDNAME: a line of its own, no ':' (the LISTEN_FDNAMES separator). */
static bool valid_name(const char *name) {
        size_t len = strlen(name);
        if (len == 0 || len > STATE_STORE_NAME_MAX)
                return false;
        for (const char *p = name; *p; p++)
                if (*p <= ' ' || *p >= 0x7f || *p == ':')
                        return false;
        return true;
}

int state_store_fd_name(char *buf, size_t len, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf, len, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -EINVAL;
        if ((size_t) n >= len || n > STATE_STORE_NAME_MAX)
                return -ENAMETOOLONG;
        return valid_name(buf) ? 0 : -EINVAL;
}

/* ---- saving --------------------------------------------------------------- */

int state_store_keep_fd(struct state_store *s, const char *name, int fd) {
        if (!state_store_enabled(s))
                return 0;
        if (!valid_name(name) || fd < 0)
                return -EINVAL;
        char msg[STATE_STORE_NAME_MAX + 32];
        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
        int r = sd_pid_notify_with_fds(0, false, msg, &fd, 1);
        return r < 0 ? r : r == 0 ? -ENOTCONN : 0;
}

int state_store_forget_fd(struct state_store *s, const char *name) {
        if (!state_store_enabled(s))
                return 0;
        if (!valid_name(name))
                return -EINVAL;
        char msg[STATE_STORE_NAME_MAX + 32];
        snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
        int r = sd_pid_notify(0, false, msg);
        return r < 0 ? r : r == 0 ? -ENOTCONN : 0;
}

/* FNV-1a, 64 bits: a check against corruption, not against an attacker (only root reaches the store). */
static uint64_t checksum(const char *p, size_t len) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);
        for (size_t i = 0; i < len; i++) {
                h ^= (unsigned char) p[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

static int write_all(int fd, const char *p, size_t len) {
        while (len) {
                ssize_t w = write(fd, p, len);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        return -errno;
                p += w;
                len -= (size_t) w;
        }
        return 0;
}

/* The envelope around body, as text (malloc'd). */
static char *envelope(json_object *body, uint64_t generation) {
        const char *text = json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN);
        char sum[32];
        snprintf(sum, sizeof(sum), "%016" PRIx64, checksum(text, strlen(text)));
        json_object *env = json_object_new_object();
        if (!env)
                return NULL;
        json_object_object_add(env, "format", json_object_new_string(STATE_STORE_FORMAT));
        json_object_object_add(env, "version", json_object_new_int(STATE_STORE_VERSION));
        json_object_object_add(env, "generation", json_object_new_uint64(generation));
        json_object_object_add(env, "checksum", json_object_new_string(sum));
        json_object_object_add(env, "body", json_object_new_string(text));
        char *out = strdup(json_object_to_json_string_ext(env, JSON_C_TO_STRING_PLAIN));
        json_object_put(env);
        return out;
}

/* A memfd holding text, sealed so that nobody (we included) can change it any more. */
static int sealed_memfd(const char *text) {
        _cleanup_close_ int fd = memfd_create("vhostmigd-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -errno;
        int r = write_all(fd, text, strlen(text));
        if (r < 0)
                return r;
        if (fcntl(fd, F_ADD_SEALS, STATE_SEALS) < 0)
                return -errno;
        return TAKE_FD(fd);
}

int state_store_publish(struct state_store *s, json_object *body) {
        if (!state_store_enabled(s))
                return 0;
        if (!json_object_is_type(json_object_object_get(body, "fds"), json_type_object))
                return -EINVAL;
        _cleanup_free_ char *text = envelope(body, s->generation + 1);
        if (!text)
                return -ENOMEM;
        _cleanup_close_ int fd = sealed_memfd(text);
        if (fd < 0)
                return fd;
        const char *slot = s->slot_b ? STATE_STORE_SLOT_A : STATE_STORE_SLOT_B;
        const char *old = s->slot_b ? STATE_STORE_SLOT_B : STATE_STORE_SLOT_A;
        int r = state_store_keep_fd(s, slot, fd);
        if (r < 0)
                return r;
        /* Only now the old one goes: a crash in between leaves two, and the newer wins. */
        if (s->published)
                (void) state_store_forget_fd(s, old);
        s->generation++;
        s->slot_b = !s->slot_b;
        s->published = true;
        return 0;
}

/* ---- restoring: what the fds are --------------------------------------------- */

static bool is_eventfd(int fd) {
        char path[64], target[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        if (n < 0)
                return false;
        target[n] = '\0';
        return strcmp(target, "anon_inode:[eventfd]") == 0;
}

static bool is_unix_stream(int fd) {
        int domain = 0, type = 0;
        socklen_t len = sizeof(int);
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
                return false;
        len = sizeof(int);
        return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && domain == AF_UNIX && type == SOCK_STREAM;
}

/* Is fd what the state says it is?  NULL when it is, else why not. */
static const char *wrong_kind(int fd, const char *kind) {
        struct stat st;
        if (fstat(fd, &st) < 0)
                return "cannot be examined (fstat)";
        if (strcmp(kind, STATE_STORE_KIND_MEMFD) == 0) {
                int seals = fcntl(fd, F_GET_SEALS);
                if (!S_ISREG(st.st_mode) || seals < 0)
                        return "is not a memfd";
                return (seals & F_SEAL_SHRINK) ? NULL : "is a memfd not sealed against shrinking";
        }
        if (strcmp(kind, STATE_STORE_KIND_FILE) == 0)
                return S_ISREG(st.st_mode) ? NULL : "is not a regular file";
        if (strcmp(kind, STATE_STORE_KIND_EVENTFD) == 0)
                return is_eventfd(fd) ? NULL : "is not an eventfd";
        if (strcmp(kind, STATE_STORE_KIND_UNIX) == 0)
                return S_ISSOCK(st.st_mode) && is_unix_stream(fd) ? NULL : "is not a Unix stream socket";
        return "has a kind this version does not know";
}

/* ---- restoring: the state ------------------------------------------------------ */

static bool is_slot(const char *name) {
        return strcmp(name, STATE_STORE_SLOT_A) == 0 || strcmp(name, STATE_STORE_SLOT_B) == 0;
}

/* The state memfd's text: sealed as publish sealed it, bounded, NUL-terminated. */
static int read_state(int fd, char **out, char *why, size_t why_len) {
        struct stat st;
        int seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                snprintf(why, why_len, "the state is not a memfd");
                return -EINVAL;
        }
        if ((seals & STATE_SEALS) != STATE_SEALS) {
                snprintf(why, why_len, "the state's memfd is not sealed against change (seals 0x%x)", seals);
                return -EINVAL;
        }
        if (st.st_size <= 0 || (uint64_t) st.st_size > STATE_STORE_MAX_STATE) {
                snprintf(why, why_len, "the state is %lld bytes (1..%u expected)", (long long) st.st_size,
                         STATE_STORE_MAX_STATE);
                return -EINVAL;
        }
        char *text = malloc((size_t) st.st_size + 1);
        if (!text)
                return -ENOMEM;
        ssize_t n = pread(fd, text, (size_t) st.st_size, 0);
        if (n != st.st_size) {
                free(text);
                snprintf(why, why_len, "the state could not be read whole");
                return -EIO;
        }
        text[n] = '\0';
        *out = text;
        return 0;
}

static const char *env_string(json_object *env, const char *key) {
        json_object *v = json_object_object_get(env, key);
        return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* The envelope: our format, our version, a body whose checksum matches. */
static int open_envelope(json_object *env, json_object **body, uint64_t *generation, char *why, size_t why_len) {
        const char *format = env_string(env, "format"), *sum = env_string(env, "checksum"),
                   *text = env_string(env, "body");
        json_object *version = json_object_object_get(env, "version"), *gen = json_object_object_get(env, "generation");
        if (!format || strcmp(format, STATE_STORE_FORMAT) != 0 || !json_object_is_type(version, json_type_int) ||
            !json_object_is_type(gen, json_type_int) || !sum || !text) {
                snprintf(why, why_len, "the state is not a %s envelope", STATE_STORE_FORMAT);
                return -EINVAL;
        }
        if (json_object_get_int64(version) != STATE_STORE_VERSION) {
                snprintf(why, why_len, "the state is version %" PRId64 ", this vhostmigd reads version %d",
                         json_object_get_int64(version), STATE_STORE_VERSION);
                return -EPROTO;
        }
        char expect[32];
        snprintf(expect, sizeof(expect), "%016" PRIx64, checksum(text, strlen(text)));
        if (strcmp(expect, sum) != 0) {
                snprintf(why, why_len, "the state's checksum is wrong (%s stored, %s computed): corrupt", sum, expect);
                return -EBADMSG;
        }
        enum json_tokener_error jerr;
        *body = json_tokener_parse_verbose(text, &jerr);
        if (!*body || !json_object_is_type(json_object_object_get(*body, "fds"), json_type_object)) {
                json_object_put(*body);
                *body = NULL;
                snprintf(why, why_len, "the state's body is not a state (%s)", json_tokener_error_desc(jerr));
                return -EBADMSG;
        }
        *generation = json_object_get_uint64(gen);
        return 0;
}

static int parse_state(int fd, json_object **body, uint64_t *generation, char *why, size_t why_len) {
        _cleanup_free_ char *text = NULL;
        int r = read_state(fd, &text, why, why_len);
        if (r < 0)
                return r;
        enum json_tokener_error jerr;
        json_object *env = json_tokener_parse_verbose(text, &jerr);
        if (!env) {
                snprintf(why, why_len, "the state is not JSON (%s): corrupt", json_tokener_error_desc(jerr));
                return -EBADMSG;
        }
        r = open_envelope(env, body, generation, why, why_len);
        json_object_put(env);
        return r;
}

static ssize_t find_name(char **names, size_t n, const char *name) {
        for (size_t i = 0; i < n; i++)
                if (names[i] && strcmp(names[i], name) == 0)
                        return (ssize_t) i;
        return -1;
}

/* Every fd the map names is there (when not optional), once, and of its kind. */
static int check_map(json_object *map, bool optional, int *fds, char **names, size_t n, char *why, size_t why_len) {
        if (!json_object_is_type(map, json_type_object)) {
                if (optional && !map)
                        return 0;
                snprintf(why, why_len, "the state's \"%s\" is not an object", optional ? "optional_fds" : "fds");
                return -EBADF;
        }
        json_object_object_foreach(map, name, kind) {
                ssize_t i = find_name(names, n, name);
                const char *k = json_object_is_type(kind, json_type_string) ? json_object_get_string(kind) : "";
                const char *bad = i < 0 ? (optional ? NULL : "is missing from the store") : wrong_kind(fds[i], k);
                if (bad) {
                        snprintf(why, why_len, "fd \"%s\" (%s) %s", name, k, bad);
                        return -EBADF;
                }
        }
        return 0;
}

static int check_fds(json_object *body, int *fds, char **names, size_t n, char *why, size_t why_len) {
        int r = check_map(json_object_object_get(body, "fds"), false, fds, names, n, why, why_len);
        return r < 0 ? r : check_map(json_object_object_get(body, "optional_fds"), true, fds, names, n, why, why_len);
}

/* The newest of the (at most two) states stored, parsed; its index in *slot. */
static int newest_state(int *fds, char **names, size_t n, json_object **body, uint64_t *generation, ssize_t *slot,
                        char *why, size_t why_len) {
        *body = NULL;
        *slot = -1;
        for (size_t i = 0; i < n; i++) {
                if (!names[i] || !is_slot(names[i]))
                        continue;
                json_object *b;
                uint64_t g;
                int r = parse_state(fds[i], &b, &g, why, why_len);
                if (r < 0) {
                        json_object_put(*body);
                        *body = NULL;
                        return r;
                }
                if (*body && g <= *generation) {
                        json_object_put(b);
                        continue;
                }
                json_object_put(*body);
                *body = b;
                *generation = g;
                *slot = (ssize_t) i;
        }
        if (!*body && n > 0) {
                snprintf(why, why_len, "%zu fds were stored but no state", n);
                return -ENOENT;
        }
        return 0;
}

static void close_and_forget(struct state_store *s, int *fds, char **names, size_t n) {
        for (size_t i = 0; i < n; i++) {
                if (fds[i] >= 0)
                        close(fds[i]);
                fds[i] = -1;
                /* Removing by name removes every fd stored under it. */
                if (names[i] && find_name(names, i, names[i]) < 0)
                        (void) state_store_forget_fd(s, names[i]);
        }
}

static void free_names(char **names, size_t n) {
        for (size_t i = 0; names && i < n; i++)
                free(names[i]);
        free(names);
}

/* The state the store will replace next: its generation and slot. */
static void continue_from(struct state_store *s, uint64_t generation, const char *slot) {
        s->generation = generation;
        s->slot_b = strcmp(slot, STATE_STORE_SLOT_B) == 0;
        s->published = true;
}

static int restored_new(json_object *body, uint64_t generation, ssize_t slot, int *fds, char **names, size_t n,
                        struct state_restored **out) {
        struct state_restored *r = calloc(1, sizeof(*r));
        int *f = calloc(n, sizeof(int));
        char **nm = calloc(n, sizeof(char *));
        bool ok = r && f && nm;
        for (size_t i = 0; ok && i < n; i++)
                ok = !names[i] || (nm[i] = strdup(names[i]));
        if (!ok) {
                free_names(nm, n);
                free(f);
                free(r);
                return -ENOMEM;
        }
        memcpy(f, fds, n * sizeof(int));
        /* The state itself is not the daemon's to take: it stays in the store until replaced. */
        close(f[slot]);
        f[slot] = -1;
        *r = (struct state_restored){ .body = body, .generation = generation, .n = n, .fds = f, .names = nm };
        *out = r;
        return 0;
}

int state_store_restore_fds(struct state_store *s, int *fds, char **names, size_t n, struct state_restored **out,
                            char *why, size_t why_len) {
        json_object *body = NULL;
        uint64_t generation = 0;
        ssize_t slot;
        *out = NULL;
        why[0] = '\0';
        if (n == 0)
                return 0;
        int r = newest_state(fds, names, n, &body, &generation, &slot, why, why_len);
        if (r == 0)
                r = check_fds(body, fds, names, n, why, why_len);
        if (r == 0) {
                continue_from(s, generation, names[slot]);
                r = restored_new(body, generation, slot, fds, names, n, out);
                if (r == 0)
                        return 0;
                snprintf(why, why_len, "out of memory");
        }
        json_object_put(body);
        close_and_forget(s, fds, names, n);
        return r;
}

int state_store_restore(struct state_store *s, struct state_restored **out, char *why, size_t why_len) {
        char **listed = NULL;
        *out = NULL;
        why[0] = '\0';
        /* unset_environment: no child of ours takes these for its own. */
        int n = sd_listen_fds_with_names(true, &listed);
        if (n < 0) {
                snprintf(why, why_len, "the fds passed cannot be taken over: %s", strerror(-n));
                return n;
        }
        if (n == 0) {
                free_names(listed, 0);
                return 0;
        }
        int *fds = calloc((size_t) n, sizeof(int));
        char **names = calloc((size_t) n, sizeof(char *));
        if (!fds || !names) {
                free(fds);
                free(names);
                free_names(listed, (size_t) n);
                for (int i = 0; i < n; i++)
                        close(SD_LISTEN_FDS_START + i);
                snprintf(why, why_len, "out of memory");
                return -ENOMEM;
        }
        for (int i = 0; i < n; i++) {
                fds[i] = SD_LISTEN_FDS_START + i;
                /* Without LISTEN_FDNAMES every fd is "unknown": no name of ours. */
                names[i] = listed ? listed[i] : NULL;
        }
        free(listed);
        int r = state_store_restore_fds(s, fds, names, (size_t) n, out, why, why_len);
        free(fds);
        free_names(names, (size_t) n);
        return r;
}

/* ---- the restored state ---------------------------------------------------------- */

json_object *state_restored_body(const struct state_restored *r) {
        return r->body;
}

uint64_t state_restored_generation(const struct state_restored *r) {
        return r->generation;
}

int state_restored_take_fd(struct state_restored *r, const char *name) {
        ssize_t i = find_name(r->names, r->n, name);
        if (i < 0 || r->fds[i] < 0)
                return -ENOENT;
        int fd = r->fds[i];
        r->fds[i] = -1;
        return fd;
}

/* name is prefix followed by a number and nothing else. */
static bool numbered(const char *name, const char *prefix) {
        size_t len = strlen(prefix);
        if (!name || strncmp(name, prefix, len) != 0 || !name[len])
                return false;
        return strspn(name + len, "0123456789") == strlen(name + len);
}

int state_restored_take_numbered(struct state_restored *r, const char *prefix, char *name, size_t name_len) {
        for (size_t i = 0; i < r->n; i++) {
                if (r->fds[i] < 0 || !numbered(r->names[i], prefix))
                        continue;
                if (snprintf(name, name_len, "%s", r->names[i]) >= (int) name_len)
                        return -ENAMETOOLONG;
                int fd = r->fds[i];
                r->fds[i] = -1;
                return fd;
        }
        return -ENOENT;
}

/* Fds nobody took, and any other slot's state, leave the store: nothing refers to them now. */
void state_restored_free(struct state_store *s, struct state_restored *r) {
        if (!r)
                return;
        for (size_t i = 0; i < r->n; i++) {
                if (r->fds[i] < 0)
                        continue;
                close(r->fds[i]);
                r->fds[i] = -1;
                if (r->names[i] && find_name(r->names, i, r->names[i]) < 0)
                        (void) state_store_forget_fd(s, r->names[i]);
        }
        free_names(r->names, r->n);
        free(r->fds);
        json_object_put(r->body);
        free(r);
}

void state_restored_abandon(struct state_store *s, struct state_restored *r) {
        if (!r)
                return;
        close_and_forget(s, r->fds, r->names, r->n);
        (void) state_store_forget_fd(s, STATE_STORE_SLOT_A);
        (void) state_store_forget_fd(s, STATE_STORE_SLOT_B);
        s->published = false;
        s->generation = 0;
        state_restored_free(s, r);
}
