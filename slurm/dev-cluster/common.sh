# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts that source this file
# Shared helpers for the dev-cluster scripts (install, up, down, status).
# Sourced, never executed. All paths / names can be overridden from the
# environment, but the defaults are what CI and the tests expect.

set -o errexit -o nounset -o pipefail

DEV_CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

: "${DEV_CLUSTER_NAME:=devcluster}"        # slurm.conf ClusterName
: "${DEV_CLUSTER_ACCOUNT:=dev}"            # sacctmgr account for root (+ $SUDO_USER)
: "${DEV_CLUSTER_PARTITION:=debug}"
: "${DEV_CLUSTER_DB:=slurm_acct_db}"
: "${DEV_CLUSTER_DB_USER:=slurm}"
: "${DEV_CLUSTER_DB_PASS:=slurmdev}"
: "${DEV_CLUSTER_TIMEOUT:=120}"            # seconds, readiness timeout of `up`

SLURM_ETC=/etc/slurm
SLURM_LOG_DIR=/var/log/slurm
SLURM_RUN_DIR=/run/slurm
SLURMCTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
MUNGE_KEY=/etc/munge/munge.key
MARIADB_LOG=/var/log/mysql/error.log
MUNGE_LOG=/var/log/munge/munged.log
MARIADB_CNF=/etc/mysql/mariadb.conf.d/99-capsfus-dev-cluster.cnf

APT_PACKAGES=(slurm-wlm slurmctld slurmd slurm-client slurmdbd munge
              mariadb-server mariadb-client procps hostname)

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}"
export SLURM_CONF="$SLURM_ETC/slurm.conf"

_tag() { printf '[dev-cluster %s] ' "$(basename "$0")"; }
log() { echo "$(_tag)$*" >&2; }

# die MESSAGE [LOGFILE...]: loud failure, tails the given logs.
die() {
    local msg="$1"; shift || true
    {
        echo
        echo "################################################################"
        echo "$(_tag)ERROR: $msg"
        echo "################################################################"
        local f
        for f in "$@"; do
            if [[ -s "$f" ]]; then
                echo "---- last 40 lines of $f ----"
                tail -n 40 "$f"
            elif [[ -n "$f" ]]; then
                echo "---- $f: missing or empty ----"
            fi
        done
        echo "################################################################"
    } >&2
    exit 1
}

# Re-exec as root (through sudo) when not root.
require_root() {
    if [[ $EUID -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            exec sudo -E -- "$0" "$@"
        fi
        echo "$(_tag)ERROR: must run as root (and sudo is not available)" >&2
        exit 1
    fi
}

# Daemon bookkeeping ---------------------------------------------------------
# pidfile and process name (as in /proc/PID/comm) per daemon.
pidfile_of() {
    case "$1" in
        munge)     echo /run/munge/munged.pid ;;
        mariadb)   echo /run/mysqld/mysqld.pid ;;
        slurmdbd)  echo "$SLURM_RUN_DIR/slurmdbd.pid" ;;
        slurmctld) echo "$SLURM_RUN_DIR/slurmctld.pid" ;;
        slurmd)    echo "$SLURM_RUN_DIR/slurmd.pid" ;;
    esac
}
comm_of() {
    case "$1" in
        munge)     echo munged ;;
        mariadb)   echo mariadbd ;;  # mysqld on older MariaDB/MySQL
        *)         echo "$1" ;;
    esac
}
logfile_of() {
    case "$1" in
        munge)     echo "$MUNGE_LOG" ;;
        mariadb)   echo "$MARIADB_LOG" ;;
        *)         echo "$SLURM_LOG_DIR/$1.log" ;;
    esac
}
startlog_of() {
    case "$1" in
        munge)   echo /var/log/munge/munged.start.log ;;
        mariadb) echo /var/log/mysql/mysqld_safe.start.log ;;
        *)       echo "$SLURM_LOG_DIR/$1.start.log" ;;
    esac
}

# Print the PID of a running daemon (pidfile first, then exact process name,
# restricted to a single match), or nothing.
daemon_pid() {
    local name="$1" pf pid comm
    pf="$(pidfile_of "$name")"; comm="$(comm_of "$name")"
    if [[ -r "$pf" ]]; then
        pid="$(tr -dc '0-9' <"$pf" 2>/dev/null || true)"
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            local c; c="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
            if [[ "$c" == "$comm" || ( "$name" == mariadb && "$c" == mysqld ) ]]; then
                echo "$pid"; return 0
            fi
        fi
    fi
    # Fallback: pidfile missing/stale (e.g. /run wiped) but process alive.
    pid="$(pgrep -o -x "$comm" 2>/dev/null || true)"
    if [[ -z "$pid" && "$name" == mariadb ]]; then
        pid="$(pgrep -o -x mysqld 2>/dev/null || true)"
    fi
    [[ -n "$pid" ]] && echo "$pid"
    return 0
}
is_running() { [[ -n "$(daemon_pid "$1")" ]]; }

# wait_until TIMEOUT CMD...: poll CMD every 0.5 s until it succeeds.
wait_until() {
    local timeout="$1"; shift
    local deadline=$((SECONDS + timeout))
    while ! "$@" >/dev/null 2>&1; do
        (( SECONDS >= deadline )) && return 1
        sleep 0.5
    done
    return 0
}

# Health probes ----------------------------------------------------------------
munge_ok()     { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
mariadb_ok()   { mariadb-admin --protocol=socket -uroot ping 2>/dev/null | grep -q alive \
                 || mysqladmin --protocol=socket -uroot ping 2>/dev/null | grep -q alive; }
slurmdbd_ok()  { timeout 10 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
slurmctld_ok() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_name()    { hostname -s; }
# Node state as sinfo prints it (%T, e.g. idle, idle*, down*, drained, mixed).
node_state()   { timeout 10 sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n1; }

# stop_daemon NAME [TIMEOUT]: graceful stop (SIGTERM / mariadb-admin shutdown),
# SIGKILL after TIMEOUT seconds.  No-op when not running.
stop_daemon() {
    local name="$1" timeout="${2:-30}" pid
    pid="$(daemon_pid "$name")"
    if [[ -z "$pid" ]]; then
        return 0
    fi
    log "stopping $name (pid $pid)"
    if [[ "$name" == mariadb ]]; then
        # A plain kill of mariadbd would make mysqld_safe restart it.
        mariadb-admin --protocol=socket -uroot shutdown >/dev/null 2>&1 \
            || kill -TERM "$pid" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
    local deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null; do
        if (( SECONDS >= deadline )); then
            log "$name (pid $pid) did not exit after ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    if [[ "$name" != mariadb ]]; then
        rm -f "$(pidfile_of "$name")"
    fi
}

# Create the runtime directories (under /run, a tmpfs on real machines).
make_run_dirs() {
    install -d -m 0755 "$SLURM_RUN_DIR" "$SLURM_LOG_DIR"
    install -d -m 0755 -o munge -g munge /run/munge /var/log/munge
    install -d -m 0755 -o mysql -g mysql /run/mysqld /var/log/mysql
}

# wait_daemon NAME TIMEOUT PROBE...: wait until PROBE succeeds.
# Returns 0 when it does, 2 as soon as daemon NAME is no longer running
# (checked after a 2 s grace period), 1 on timeout.
wait_daemon() {
    local name="$1" timeout="$2"; shift 2
    local start=$SECONDS deadline=$((SECONDS + timeout))
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        if (( SECONDS - start >= 2 )) && ! is_running "$name"; then
            "$@" >/dev/null 2>&1 && return 0
            return 2
        fi
        (( SECONDS >= deadline )) && return 1
        sleep 0.5
    done
}

# Serialise install/up/down (e.g. parallel test workers all calling `up`).
# Child scripts inherit DEV_CLUSTER_LOCKED and do not lock again.
take_lock() {
    [[ -n "${DEV_CLUSTER_LOCKED:-}" ]] && return 0
    exec 9>/run/capsfus-dev-cluster.lock
    if ! flock -w 600 9; then
        die "could not get /run/capsfus-dev-cluster.lock within 600 s (another install/up/down running?)"
    fi
    export DEV_CLUSTER_LOCKED=1
}
