#!/usr/bin/env bash
# Bring up a real single-node Slurm on this host, for tests: munged, slurmctld and slurmd.
#
#   sudo cluster/slurm/start_test_slurm.sh          # prints `export SLURM_CONF=...` last
#   eval "$(cluster/slurm/start_test_slurm.sh | tail -n 1)" && sinfo
#
# Idempotent and fast on a second run: packages are installed only when missing, daemons
# started only when not already answering, and the config rewritten only when it changed
# (then the daemons this script started are restarted). Everything lives under one
# directory ($LONGVID_SLURM_DIR, default /tmp/longvid-slurm) with its own munge socket and
# key and non-default ports, so a system Slurm or munge on the host is left untouched;
# client commands find this cluster through SLURM_CONF.
#
# Needs root and apt-get (Debian/Ubuntu). Exit codes: 0 up; 3 the packages cannot be installed
# here (not root, no apt-get, or apt-get failed: the tests skip on that, and only on that);
# anything else is a real failure.
#
# Environment: LONGVID_SLURM_DIR, LONGVID_SLURM_CPUS (default 2), LONGVID_SLURMCTLD_PORT
# (16817), LONGVID_SLURMD_PORT (16818), LONGVID_SLURM_TIMEOUT (seconds to wait, 120).
set -euo pipefail

DIR=${LONGVID_SLURM_DIR:-/tmp/longvid-slurm}
CPUS=${LONGVID_SLURM_CPUS:-2}
CTLD_PORT=${LONGVID_SLURMCTLD_PORT:-16817}
SLURMD_PORT=${LONGVID_SLURMD_PORT:-16818}
TIMEOUT=${LONGVID_SLURM_TIMEOUT:-120}
HOST=$(hostname -s)
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
export SLURM_CONF=$CONF

log() { echo "start_test_slurm: $*" >&2; }
die() { log "error: $*"; exit "${2:-1}"; }

[ "$(id -u)" = 0 ] || die "must run as root to install slurm-wlm/munge and start slurmd" 3
mkdir -p "$DIR"/{munge,state,spool,log}
chmod 700 "$DIR/munge"

# -- packages -------------------------------------------------------------------------------
have_all() {
    local b
    for b in munged mungekey slurmctld slurmd sbatch sinfo scontrol srun; do
        command -v "$b" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null 2>&1 || return 1
    done
}
export PATH=$PATH:/usr/sbin:/sbin
if ! have_all; then
    command -v apt-get >/dev/null || die "slurm-wlm/munge missing and no apt-get to install them" 3
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be stale or empty on a fresh machine: update once on failure.
    if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >"$DIR/log/apt.log" 2>&1; then
        { apt-get update -q && apt-get install -y -q --no-install-recommends slurm-wlm munge; } \
            >>"$DIR/log/apt.log" 2>&1 || { tail -n 20 "$DIR/log/apt.log" >&2; die "apt-get install slurm-wlm munge failed" 3; }
    fi
    have_all || die "slurm-wlm/munge installed but a command is missing" 3
fi

# -- munge: own key, socket, pid and log files; runs as root (--force: root-owned dirs) -------
munge_ok() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }
if ! munge_ok; then
    if [ ! -s "$DIR/munge/munge.key" ]; then
        mungekey --create --keyfile="$DIR/munge/munge.key" --force 2>/dev/null ||
            dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
    fi
    chmod 400 "$DIR/munge/munge.key"
    if [ -s "$DIR/munge/munged.pid" ] && kill -0 "$(cat "$DIR/munge/munged.pid")" 2>/dev/null; then
        kill "$(cat "$DIR/munge/munged.pid")" || true   # ours, but not answering: restart it
        sleep 1
    fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    log "starting munged ($MUNGE_SOCKET)"
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    for _ in $(seq 50); do munge_ok && break; sleep 0.2; done
    munge_ok || { tail -n 20 "$DIR/log/munged.log" >&2 || true; die "munged does not answer on $MUNGE_SOCKET"; }
fi

# -- slurm.conf -------------------------------------------------------------------------------
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
PLUGINS=$(dirname "$(find /usr/lib -name select_cons_tres.so -print -quit 2>/dev/null || true)")
cat >"$CONF.new" <<EOF
# Written by cluster/slurm/start_test_slurm.sh: a single-node test cluster, no cgroups.
ClusterName=longvidtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
${PLUGINS:+PluginDir=$PLUGINS}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
InactiveLimit=0
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
changed=0
if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"
    changed=1
else
    rm -f "$CONF.new"
fi

# -- daemons (ours are found by their pid files) ----------------------------------------------
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_ours() {  # stop a daemon this script started, by the pid in its pid file
    local pidf=$1 pid
    alive "$pidf" || return 0
    pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}
if [ "$changed" = 1 ]; then
    stop_ours "$DIR/slurmd.pid"
    stop_ours "$DIR/slurmctld.pid"
fi
if ! alive "$DIR/slurmctld.pid" || ! scontrol ping 2>/dev/null | grep -q UP; then
    stop_ours "$DIR/slurmctld.pid"
    log "starting slurmctld (port $CTLD_PORT)"
    slurmctld -f "$CONF"
fi
for _ in $(seq $((TIMEOUT * 2))); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
scontrol ping 2>/dev/null | grep -q UP || { tail -n 30 "$DIR/log/slurmctld.log" >&2 || true; die "slurmctld is not answering"; }
if ! alive "$DIR/slurmd.pid"; then
    log "starting slurmd (node $HOST, port $SLURMD_PORT)"
    slurmd -f "$CONF" -N "$HOST"
fi

# -- wait until the node is usable ------------------------------------------------------------
state=""
for _ in $(seq $((TIMEOUT * 2))); do
    state=$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle|mix|alloc|comp) break ;;
        down*|drain*|drng*|fail*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mix|alloc|comp) ;;
    *) tail -n 30 "$DIR/log/slurmd.log" >&2 || true; die "node $HOST is '$state', not idle, after ${TIMEOUT}s" ;;
esac
log "up: node $HOST is $state"
echo "export SLURM_CONF=$CONF"
