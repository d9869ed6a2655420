#!/usr/bin/env bash
# A real single-machine Slurm cluster for the tests: munge + slurmctld + slurmd, started as
# root with a minimal configuration (proctrack/linuxproc, task/none, no accounting) and one
# node with more CPUs than the machine has (overcommit), so `srun -n 8` runs on 2 cores.
#
#   tools/testbed/slurm.sh up      start (idempotent: a running cluster is reused)
#   tools/testbed/slurm.sh down    stop the daemons this script started
#   tools/testbed/slurm.sh status  exit 0 when the node is up and idle
#   tools/testbed/slurm.sh env     print the variable clients need (SLURM_CONF=...)
#
# Everything lives under $LAZARUS_SLURM_DIR (default /tmp/lazarus-slurm); /etc/slurm is not
# touched, so clients need SLURM_CONF (see `env`). Needs root and the Debian packages
# slurmd, slurmctld, slurm-client and munge (.ci/run installs them).
set -euo pipefail
DIR="${LAZARUS_SLURM_DIR:-/tmp/lazarus-slurm}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"
CPUS="${LAZARUS_SLURM_CPUS:-8}"
export SLURM_CONF="$CONF"

log() { echo "slurm.sh: $*" >&2; }

write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat > "$CONF" <<CONF
ClusterName=lazarus
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
MinJobAge=30
Waittime=0
NodeName=$NODE CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

idle() {
    local s
    s="$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null || true)"
    case "$s" in idle*|mix*|alloc*) return 0 ;; *) return 1 ;; esac
}

up() {
    [ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
    for b in munged slurmctld slurmd sinfo srun; do
        command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || { log "missing $b"; exit 1; }
    done
    if idle; then log "already up ($CONF)"; return 0; fi
    write_conf
    if ! munge -n </dev/null >/dev/null 2>&1; then
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        chown munge:munge /run/munge /var/log/munge /var/lib/munge
        [ -f /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
        runuser -u munge -- /usr/sbin/munged
        touch "$DIR/munged.ours"
    fi
    alive "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -c -f "$CONF"
    alive "$DIR/slurmd.pid" || /usr/sbin/slurmd -f "$CONF"
    for _ in $(seq 1 120); do
        if idle; then log "up: node $NODE with $CPUS CPUs ($CONF)"; return 0; fi
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        sleep 0.5
    done
    log "node $NODE did not become idle; logs in $DIR/log"
    sinfo -N -l >&2 || true
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
}

down() {
    # Every job of the test cluster (ours alone: its own slurmctld and state directory).
    scancel --user=root >/dev/null 2>&1 || true
    for p in slurmd slurmctld; do
        if alive "$DIR/$p.pid"; then kill "$(cat "$DIR/$p.pid")" || true; fi
    done
    if [ -f "$DIR/munged.ours" ]; then
        alive /run/munge/munged.pid && kill "$(cat /run/munge/munged.pid)" || true
        rm -f "$DIR/munged.ours"
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) idle ;;
    env) echo "SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
