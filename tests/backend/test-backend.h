/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The project's own vhost-user back-end for tests: scriptable, recording and
 * fault-injecting.
 *
 * It serves every front-end request of the specification from the request
 * table (proto/vhost-user-table.h): it validates what it receives (flags,
 * sizes, fd counts, feature gates) and writes a "VIOLATION ..." line to the
 * record file whenever the front-end breaks a rule, keeps the device state
 * a real back-end keeps (features, rings, fds, memory mappings, the log),
 * answers the GET requests, and can be told to misbehave at the Nth
 * occurrence of a request (close, hang, malformed replies, refusals).
 *
 * Record file: one line per event, written and flushed at once (appended,
 * so several back-ends or connections may share one file):
 *   CONNECTION <n> OPEN                    (n counts from 1 per serving process)
 *   <REQUEST_NAME> flags=0x.. size=N fds=N [key=value ...]
 *   FAULT <kind> <REQUEST_NAME>            (die: written before the process exits)
 *   VIOLATION <text>
 *   BACKEND_SENT <name> flags=0x.. size=N fds=N
 *   BACKEND_REPLY <name> <status>          (<status> is the u64 in decimal,
 *                                            or "closed" / "timeout" / "invalid")
 *   BACKEND_SKIPPED <name> <why>
 *   BACKEND_CHANNEL_CLOSED
 *   BACKEND_FLOOD <name> sent=N <why>      (flood-channel ended: "channel write failed: ..."
 *                                            or "front-end hung up")
 *   BACKEND_HALF_HEADER <name> 6 bytes     (channel-half-header)
 *   TRUNCATED gpa=0x.. size=0x.. <result>  (truncate-memory, one per region: "ok" or why not)
 *   NO_ACCEPT backlog=N                    (no_accept: N connections of its own fill the backlog)
 *   CONNECTION <n> CLOSED <why>            (peer closed, fault close,
 *                                            fault hang, then peer closed, ...)
 * A request's line comes before its FAULT and VIOLATION lines and before its
 * reply is sent; back-end requests sent "after" a request are recorded after
 * that request's reply went out (make a round trip before looking for them).
 * Unknown request numbers print as REQUEST_<n>.  Key fields, by request:
 *   SET_FEATURES, SET_PROTOCOL_FEATURES    features=0x..
 *   SET_MEM_TABLE                          nregions=N gpaI= sizeI= uaddrI= offsetI= (hex)
 *   SET_LOG_BASE                           mmap_size=0x.. mmap_offset=0x.. [seals=0x..]
 *   SET/GET_VRING_BASE, SET_VRING_NUM, SET_VRING_ENABLE, SET_VRING_ENDIAN, VRING_KICK
 *                                          index=N num=N
 *   SET_VRING_ADDR                         index=N vring_flags=0x.. desc= used= avail= log= (hex)
 *   SET_VRING_KICK/CALL/ERR                index=N nofd=0|1
 *   SEND_RARP                              mac=aa:bb:cc:dd:ee:ff
 *   NET_SET_MTU                            mtu=N
 *   GET/SET_CONFIG                         offset=N config_size=N config_flags=0x..
 *   GET/SET_INFLIGHT_FD                    mmap_size= mmap_offset= num_queues= queue_size=
 *   ADD/REM_MEM_REG                        gpa= size= uaddr= offset= (hex)
 *   SET_STATUS status=0x..   IOTLB_MSG iova= size= uaddr= perm= type=
 *   CLOSE_CRYPTO_SESSION session=N   GET_SHARED_OBJECT uuid=<hex>
 *   SET_DEVICE_STATE_FD direction=N phase=N
 *
 * The back-end's own state (DEVICE_STATE, offered unless no_device_state): a
 * blob of device_state_size bytes (tb_device_state_fill with
 * device_state_seed), kept by the serving process across connections.
 * SET_DEVICE_STATE_FD starts the transfer on the fd it carries (save: the
 * blob written and the fd closed; load: read to EOF, at most
 * TB_MAX_DEVICE_STATE bytes); CHECK_DEVICE_STATE waits for it to end and
 * records it, a loaded blob becoming the back-end's state:
 *   DEVICE_STATE saved bytes=N hash=0x<16 hex>
 *   DEVICE_STATE loaded bytes=N hash=0x<16 hex>   (tb_device_state_hash)
 *   DEVICE_STATE failed <direction> <why>          (CHECK_DEVICE_STATE answers 1)
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define TB_MAX_FAULTS       32
#define TB_MAX_BACKEND_REQS 16
#define TB_MAX_MEM_SLOTS    512
#define TB_MAX_DEVICE_STATE (32u << 20)

/* Defaults. */
/* DPDK 22.11's offer (0xd7c66e7cb) without VIRTIO_NET_F_GUEST_ANNOUNCE. */
#define TB_DEFAULT_FEATURES (UINT64_C(0xd7c66e7cb) & ~(UINT64_C(1) << 21))
/* Protocol features 0..19 except PAGEFAULT (8) and XEN_MMAP (17). */
#define TB_DEFAULT_PROTOCOL_FEATURES    (UINT64_C(0xfffff) & ~(UINT64_C(1) << 8) & ~(UINT64_C(1) << 17))
#define TB_DEFAULT_QUEUES               4u
#define TB_DEFAULT_MAX_MEM_SLOTS        32u
#define TB_DEFAULT_LOG_REPLY_SIZE       8u
#define TB_DEFAULT_IO_TIMEOUT_MS        5000u
#define TB_DEFAULT_RECONNECT_TIMEOUT_MS 30000u

enum tb_fault_kind {
        TB_FAULT_CLOSE,         /* close the connection instead of answering */
        TB_FAULT_BAD_FLAGS,     /* reply flags = value (default 0xd) */
        TB_FAULT_OVERSIZE,      /* reply payload 8 bytes above the table's maximum */
        TB_FAULT_UNDERSIZE,     /* reply payload one byte short (4 bytes when it would be empty) */
        TB_FAULT_WRONG_REQUEST, /* reply echoes request number `value` (default: the next one) */
        TB_FAULT_EXTRA_FDS,     /* reply carries `value` (default 1) /dev/null fds beyond what it may */
        TB_FAULT_NACK,          /* refuse: status `value` (default 1), state left unchanged */
        TB_FAULT_HANG,          /* read the request, never answer, until the front-end hangs up */
        TB_FAULT_GARBAGE,       /* reply header with size 0xffffffff */
        /*
         * Withhold the reply and stream back-end requests on the back-end
         * channel without NEED_REPLY, as fast as the socket takes them, until
         * a channel write fails or the front-end hangs up; then wait for the
         * hang-up, as hang does.  CONFIG_CHANGE_MSG when CONFIG was negotiated,
         * else IOTLB_MSG (an IOTLB miss).  Without a back-end channel it only
         * hangs (BACKEND_SKIPPED).  Ends with a BACKEND_FLOOD record line.
         * With value 1 (flood-channel=1) the trigger is answered as usual
         * and the flood comes after it, while the device runs; once it ends
         * the back-end goes on serving requests without its channel.
         */
        TB_FAULT_FLOOD_CHANNEL,
        /* Write the first 6 bytes of a CONFIG_CHANGE_MSG header on the back-end
         * channel, then withhold the reply as hang does. */
        TB_FAULT_CHANNEL_HALF_HEADER,
        /*
         * ftruncate() every guest-memory fd the connection holds (SET_MEM_TABLE,
         * ADD_MEM_REG) to 0, record each result (a sealed memfd refuses), and
         * close the connection without answering: the front-end's reconnect
         * path then reads guest memory that may be gone.
         */
        TB_FAULT_TRUNCATE_MEMORY,
        /*
         * The serving process exits at once (_exit(value), default 1) without
         * answering or closing anything, as a crashed back-end: its socket
         * and channel close with it.  For spawned back-ends and the program
         * only (a test calling tb_serve_fd in-process would exit too).
         */
        TB_FAULT_DIE,
        /*
         * Tell the test that the request arrived: SIGUSR1 to the parent
         * process (the test that spawned the back-end), then answer as usual
         * `value` ms later (default 200), so that what the test does on the
         * signal (cut a channel, cancel, kill a process) happens while the
         * front-end is at that very request.
         */
        TB_FAULT_NOTIFY,
        TB_FAULT_KIND_COUNT
};

struct tb_fault {
        uint32_t request; /* front-end request number */
        enum tb_fault_kind kind;
        unsigned nth; /* fires at this occurrence, counted from 1 (0 = 1) */
        bool has_value;
        uint64_t value; /* kind-specific, see enum tb_fault_kind */
};

/* When a back-end request goes out, relative to the trigger request's reply. */
enum tb_backend_timing {
        /* After the reply to the trigger; the front-end's reply is read whenever it comes. */
        TB_BACKEND_AFTER_REPLY,
        /* Before the reply: the back-end waits (io_timeout_ms) for the front-end's
         * answer first, as back-ends that block on their own request do. */
        TB_BACKEND_BEFORE_REPLY,
};

struct tb_backend_req {
        uint32_t request; /* back-end request number; unknown numbers are sent as-is */
        bool need_reply;
        uint32_t after; /* trigger: front-end request; 0 = SET_OWNER */
        enum tb_backend_timing timing;
        uint32_t index; /* queue index for VRING_CALL/ERR/HOST_NOTIFIER */
};

struct tb_config {
        uint64_t features;          /* offered */
        uint64_t protocol_features; /* offered */
        unsigned queues;            /* GET_QUEUE_NUM; rings 0..2*queues-1 are valid */
        unsigned max_mem_slots;     /* GET_MAX_MEM_SLOTS, at most TB_MAX_MEM_SLOTS */
        unsigned log_reply_size;    /* SET_LOG_BASE reply: 0, 8 or 16 bytes */

        /* Convenience switches, applied on top of the two offers. */
        bool no_protocol_features; /* clears bit 30 and offers no protocol features */
        bool no_log_shmfd;
        bool no_rarp;
        bool no_reply_ack;
        bool no_mq;
        bool no_log_all;      /* clears VHOST_F_LOG_ALL (bit 26) */
        bool no_device_state; /* clears DEVICE_STATE (protocol feature 19) */

        /* The back-end's own state at start: this many bytes (0..TB_MAX_DEVICE_STATE) from this seed. */
        size_t device_state_size;
        uint32_t device_state_seed;

        const char *record_path; /* NULL: no record */
        bool verbose;            /* also copy the record to stderr */

        /* tb_run_listen / tb_run_connect / tb_spawn_*: connections to serve
         * one after another before exiting; 0 = until killed.  Default 1. */
        unsigned max_connections;
        /* A message's rest after its header, connecting, blocking back-end requests. */
        unsigned io_timeout_ms;
        /* Client mode: how long to keep trying to reconnect after a connection
         * ended (the first connect uses io_timeout_ms); 0 = forever.  Default 30 s. */
        unsigned reconnect_timeout_ms;

        /*
         * Listen mode only: listen with the smallest backlog, fill it with
         * connections of our own (non-blocking connects until EAGAIN) and never
         * accept, until killed.  A front-end's blocking connect() then blocks
         * for ever.  `ready` is reported once the backlog is full.
         */
        bool no_accept;
        /*
         * Run as this user / group ((uid_t) -1 / (gid_t) -1, the default:
         * unchanged).  tb_run_listen / tb_run_connect drop privileges
         * (setgroups(0), setresgid, setresuid) after opening the record file and
         * before creating or connecting their socket: a test running as root
         * plays an unprivileged local user.
         */
        uid_t run_as_uid;
        gid_t run_as_gid;
        /* Every reply and every back-end channel message carries one extra fd
         * (/dev/null), where none or fewer are allowed. */
        bool fds_on_every_message;

        struct tb_fault faults[TB_MAX_FAULTS];
        unsigned nfaults;
        struct tb_backend_req backend_reqs[TB_MAX_BACKEND_REQS];
        unsigned nbackend_reqs;
};

void tb_config_init(struct tb_config *cfg);
/* 0, or -EINVAL when a value is out of range (queues 1..128, max_mem_slots
 * 1..TB_MAX_MEM_SLOTS, log_reply_size 0/8/16); *why (optional) says which. */
int tb_config_check(const struct tb_config *cfg, const char **why);

/* The offers after the convenience switches. */
uint64_t tb_config_features(const struct tb_config *cfg);
uint64_t tb_config_protocol_features(const struct tb_config *cfg);

/* 0, or -ENOSPC / -EINVAL. */
int tb_config_add_fault(struct tb_config *cfg, const struct tb_fault *fault);
int tb_config_add_backend_req(struct tb_config *cfg, const struct tb_backend_req *req);

/* Front-end request by table name ("SET_MEM_TABLE") or number; -EINVAL if unknown. */
int tb_request_from_name(const char *name, uint32_t *request);
/* Back-end request by table name ("CONFIG_CHANGE_MSG") or any number ("99"). */
int tb_backend_request_from_name(const char *name, uint32_t *request);

const char *tb_fault_kind_name(enum tb_fault_kind kind);
int tb_fault_kind_from_name(const char *name, enum tb_fault_kind *kind);

/* "REQ:KIND[=VALUE][:N]", e.g. "SET_MEM_TABLE:close", "GET_FEATURES:bad-flags=0x1:2",
 * "GET_VRING_BASE:flood-channel", "SET_VRING_KICK:truncate-memory:2". */
int tb_parse_fault(const char *spec, struct tb_fault *fault);
/* "REQ[:need-reply][:block][:after=REQ][:index=N]", e.g. "CONFIG_CHANGE_MSG:need-reply". */
int tb_parse_backend_req(const char *spec, struct tb_backend_req *req);

/*
 * Serves one connection on a connected socket (takes ownership of fd) until
 * the front-end hangs up or a fault ends it.  Returns 0, or a negative errno
 * when the record file cannot be opened.  Faults count occurrences from this
 * call's start.
 */
int tb_serve_fd(const struct tb_config *cfg, int fd);

/*
 * Blocking loops (what the program and the spawned children run): listen on
 * path (or connect to it, retrying for io_timeout_ms, and reconnecting after
 * each connection for up to reconnect_timeout_ms) and serve max_connections
 * connections one after another.
 * Fault occurrences are counted across connections, so a fault fires once
 * and the next connection is served normally.  `ready`, when not NULL, is
 * called once the socket listens / the first connection is made, or failed
 * (negative errno).  Returns 0 or a negative errno.
 */
typedef void (*tb_ready_fn)(void *userdata, int status);
int tb_run_listen(const struct tb_config *cfg, const char *path, tb_ready_fn ready, void *userdata);
int tb_run_connect(const struct tb_config *cfg, const char *path, tb_ready_fn ready, void *userdata);

/*
 * Fork a child running tb_run_listen / tb_run_connect.  They return only once
 * the child listens on path (or is connected to it), so the caller may
 * connect (or accept) at once; on failure the child has been reaped and a
 * negative errno is returned.  The child closes every inherited fd, dies with
 * its parent, and on SIGTERM removes its socket and exits.
 */
int tb_spawn_listen(const struct tb_config *cfg, const char *path, pid_t *pid);
int tb_spawn_connect(const struct tb_config *cfg, const char *path, pid_t *pid);

/*
 * Drops to cfg->run_as_uid / run_as_gid when set (tb_run_* call it; exposed
 * for tests): 0, or a negative errno.  The parent-death signal, which the
 * kernel clears on a change of credentials, is set again.
 */
int tb_drop_privileges(const struct tb_config *cfg);

/* SIGTERM, wait (SIGKILL after 2 s); returns the wait status, or a negative errno.
 * Every fault stops on SIGTERM at once, including a flooding or hanging child. */
int tb_stop(pid_t pid);
/* Waits up to timeout_ms for the child to exit on its own: its wait status, or -ETIMEDOUT. */
int tb_wait_exit(pid_t pid, unsigned timeout_ms);

/* The blob a back-end with device_state_seed starts with, and the hash its record lines show (FNV-1a 64). */
void tb_device_state_fill(uint32_t seed, void *buf, size_t len);
uint64_t tb_device_state_hash(const void *buf, size_t len);

/* Reading a record file (for tests).  Lines are compared without their newline. */
char *tb_record_read(const char *path);                        /* malloc'd, NULL if absent */
int tb_record_count(const char *path, const char *prefix);     /* lines starting with prefix */
bool tb_record_contains(const char *path, const char *needle); /* substring anywhere */
