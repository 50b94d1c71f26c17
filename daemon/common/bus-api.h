/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The names of the org.vhostmig1 D-Bus API (docs/dbus-api.md), for the
 * daemon and every client: the bus name, object paths, interfaces, errors,
 * option keys and properties.  The property lists are the API's; the daemon
 * generates its vtables from its own tables, and tests/dbus/test-api-doc
 * checks that the running daemon, this header and docs/dbus-api.md agree.
 */
#pragma once

#define VHOSTMIG_BUS_NAME     "org.vhostmig1"
#define VHOSTMIG_ROOT_PATH    "/org/vhostmig1"
#define VHOSTMIG_VM_PREFIX    "/org/vhostmig1/vm" /* + "/" + sd_bus_path_encode(name) */
#define VHOSTMIG_DEVICE_INFIX "/dev/"             /* VM path + "/dev/" + N */

#define VHOSTMIG_MANAGER_INTERFACE "org.vhostmig1.Manager"
#define VHOSTMIG_VM_INTERFACE      "org.vhostmig1.Vm"
#define VHOSTMIG_DEVICE_INTERFACE  "org.vhostmig1.Device"

/* Errors of our own; the others are org.freedesktop.DBus.Error.{AccessDenied,InvalidArgs,UnknownObject}. */
#define VHOSTMIG_ERROR(name)             "org.vhostmig1.Error." name
#define VHOSTMIG_ERROR_NO_SUCH_VM        VHOSTMIG_ERROR("NoSuchVm")
#define VHOSTMIG_ERROR_NO_SUCH_DEVICE    VHOSTMIG_ERROR("NoSuchDevice")
#define VHOSTMIG_ERROR_VM_EXISTS         VHOSTMIG_ERROR("VmExists")
#define VHOSTMIG_ERROR_LIMITS_EXCEEDED   VHOSTMIG_ERROR("LimitsExceeded")
#define VHOSTMIG_ERROR_MIGRATION_BLOCKED VHOSTMIG_ERROR("MigrationBlocked")
#define VHOSTMIG_ERROR_BACKEND           VHOSTMIG_ERROR("Backend")
#define VHOSTMIG_ERROR_NOT_SUPPORTED     VHOSTMIG_ERROR("NotSupported")
#define VHOSTMIG_ERROR_INVALID_STATE     VHOSTMIG_ERROR("InvalidState")
#define VHOSTMIG_ERROR_BUSY              VHOSTMIG_ERROR("Busy")

/* Every error name the API answers with (docs/dbus-api.md documents each). */
#define VHOSTMIG_ERRORS(X)                            \
        X("org.freedesktop.DBus.Error.AccessDenied")  \
        X("org.freedesktop.DBus.Error.InvalidArgs")   \
        X("org.freedesktop.DBus.Error.UnknownObject") \
        X(VHOSTMIG_ERROR_NO_SUCH_VM)                  \
        X(VHOSTMIG_ERROR_NO_SUCH_DEVICE)              \
        X(VHOSTMIG_ERROR_VM_EXISTS)                   \
        X(VHOSTMIG_ERROR_LIMITS_EXCEEDED)             \
        X(VHOSTMIG_ERROR_MIGRATION_BLOCKED)           \
        X(VHOSTMIG_ERROR_BACKEND)                     \
        X(VHOSTMIG_ERROR_NOT_SUPPORTED)               \
        X(VHOSTMIG_ERROR_INVALID_STATE)               \
        X(VHOSTMIG_ERROR_BUSY)

/* Option keys of the a{sv} arguments, and their types. */
#define VHOSTMIG_OPTION_SERVER           "Server"          /* AddDevice: b */
#define VHOSTMIG_OPTION_FEATURES         "Features"        /* AddDevice: t */
#define VHOSTMIG_OPTION_QUEUE_PAIRS      "QueuePairs"      /* AddDevice: u */
#define VHOSTMIG_OPTION_MAC              "Mac"             /* AddDevice: s */
#define VHOSTMIG_OPTION_MTU              "Mtu"             /* AddDevice: q */
#define VHOSTMIG_OPTION_INCOMING         "Incoming"        /* AddDevice: b */
#define VHOSTMIG_OPTION_TYPE             "Type"            /* AddDevice: s, one of VHOSTMIG_DEVICE_TYPE_* */
#define VHOSTMIG_OPTION_SWITCH_LOCKED    "LogSwitchLocked" /* AddDevice: b */
#define VHOSTMIG_OPTION_LISTEN           "Listen"          /* PrepareIncoming: s */
#define VHOSTMIG_OPTION_TOKEN_TIMEOUT_MS "TokenTimeoutMs"  /* PrepareIncoming: u */
#define VHOSTMIG_OPTION_TIMEOUT_MS       "TimeoutMs"       /* PrepareIncoming, MigrateTo: u */
#define VHOSTMIG_OPTION_LIVE             "Live"            /* MigrateTo: b */
#define VHOSTMIG_OPTION_MAX_DOWNTIME_MS  "MaxDowntimeMs"   /* MigrateTo: u (needs Live) */
#define VHOSTMIG_OPTION_MAX_BANDWIDTH    "MaxBandwidth"    /* MigrateTo: t, bytes/s (needs Live) */
#define VHOSTMIG_OPTION_MAX_ROUNDS       "MaxRounds"       /* MigrateTo: u (needs Live) */
#define VHOSTMIG_OPTION_FORCE_SWITCHOVER "ForceSwitchover" /* MigrateTo: b (needs Live) */
#define VHOSTMIG_OPTION_PAUSE_TIMEOUT_MS "PauseTimeoutMs"  /* MigrateTo: u (needs Live) */
#define VHOSTMIG_OPTION_LIBVIRT_DOMAIN   "LibvirtDomain"   /* CreateVm: s, a libvirt domain's UUID or name */

/* A stock dbus-daemon carries at most this many fds in one message (max_message_unix_fds). */
#define VHOSTMIG_BUS_MAX_FDS 16
/* Each queue brings a kick and a call eventfd. */
#define VHOSTMIG_FDS_PER_QUEUE 2

/*
 * Properties: X(name, signature), in introspection order.  The device's
 * State is one of the VHOSTMIG_DEVICE_STATE_* strings.
 */
#define VHOSTMIG_MANAGER_PROPERTIES(X) \
        X(Version, "s")                \
        X(Vms, "ao")                   \
        X(LibvirtUri, "s")             \
        X(LibvirtConnection, "s")      \
        X(LibvirtLastError, "s")       \
        X(LibvirtLastErrorTimestamp, "t")

#define VHOSTMIG_VM_PROPERTIES(X)    \
        X(Name, "s")                 \
        X(MemorySize, "t")           \
        X(PageSize, "u")             \
        X(Devices, "ao")             \
        X(MigrationBlocked, "b")     \
        X(MigrationBlockers, "as")   \
        X(Logging, "b")              \
        X(LogIncomplete, "b")        \
        X(LogSize, "t")              \
        X(DirtyPages, "t")           \
        X(Harvests, "t")             \
        X(CreatedTimestamp, "t")     \
        X(StateChangeTimestamp, "t") \
        X(LastError, "s")            \
        X(LastErrorTimestamp, "t")   \
        X(MigrationState, "s")       \
        X(Role, "s")                 \
        X(PagesTotal, "t")           \
        X(PagesTransferred, "t")     \
        X(ZeroPages, "t")            \
        X(BytesTransferred, "t")     \
        X(DowntimeMs, "t")           \
        X(TotalMs, "t")              \
        X(RarpSent, "u")             \
        X(MigrationChecksum, "t")    \
        X(MigrationError, "s")       \
        X(DirtyBitmaps, "u")         \
        X(Round, "t")                \
        X(PagesRemaining, "t")       \
        X(DirtyRate, "t")            \
        X(Bandwidth, "t")            \
        X(ExpectedDowntimeMs, "t")   \
        X(SetupMs, "t")              \
        X(LibvirtDomain, "s")        \
        X(LibvirtDowntimeMs, "t")

#define VHOSTMIG_DEVICE_PROPERTIES(X) \
        X(Socket, "s")                \
        X(Server, "b")                \
        X(Type, "s")                  \
        X(LogSwitchLocked, "b")       \
        X(State, "s")                 \
        X(Features, "t")              \
        X(AckedFeatures, "t")         \
        X(ProtocolFeatures, "t")      \
        X(AckedProtocolFeatures, "t") \
        X(QueuePairs, "u")            \
        X(Mac, "s")                   \
        X(Mtu, "q")                   \
        X(MigrationBlockers, "as")    \
        X(RingIndices, "au")          \
        X(Reconnects, "t")            \
        X(RefusedPeers, "t")          \
        X(Requests, "t")              \
        X(RequestFailures, "t")       \
        X(CreatedTimestamp, "t")      \
        X(StateChangeTimestamp, "t")  \
        X(LastError, "s")             \
        X(LastErrorTimestamp, "t")

#define VHOSTMIG_DEVICE_STATE_CONFIGURING  "configuring"
#define VHOSTMIG_DEVICE_STATE_DISCONNECTED "disconnected"
#define VHOSTMIG_DEVICE_STATE_READY        "ready"
#define VHOSTMIG_DEVICE_STATE_RUNNING      "running"
#define VHOSTMIG_DEVICE_STATE_STOPPED      "stopped"
#define VHOSTMIG_DEVICE_STATE_FAILED       "failed"

/* AddDevice's Type and the device's Type property: what the back-end serves. */
#define VHOSTMIG_DEVICE_TYPE_NET   "net"
#define VHOSTMIG_DEVICE_TYPE_FS    "fs"
#define VHOSTMIG_DEVICE_TYPE_BLK   "blk"
#define VHOSTMIG_DEVICE_TYPE_OTHER "other"

/* The Vm's MigrationState and Role. */
#define VHOSTMIG_MIGRATION_STATE_NONE                "none"
#define VHOSTMIG_MIGRATION_STATE_SETUP               "setup"
#define VHOSTMIG_MIGRATION_STATE_ACTIVE              "active"
#define VHOSTMIG_MIGRATION_STATE_SWITCHOVER          "switchover"
#define VHOSTMIG_MIGRATION_STATE_PRE_SWITCHOVER      "pre-switchover"
#define VHOSTMIG_MIGRATION_STATE_POSTMIGRATE_UNKNOWN "postmigrate-unknown"
#define VHOSTMIG_MIGRATION_STATE_COMPLETED           "completed"
#define VHOSTMIG_MIGRATION_STATE_FAILED              "failed"
#define VHOSTMIG_MIGRATION_STATE_CANCELLED           "cancelled"
#define VHOSTMIG_ROLE_NONE                           "none"
#define VHOSTMIG_ROLE_SOURCE                         "source"
#define VHOSTMIG_ROLE_DESTINATION                    "destination"

/* What DirtyPages counts. */
#define VHOSTMIG_PAGE_SIZE 4096u
