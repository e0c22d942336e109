#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for development and CI (run as root).
#
#     bash launch/local_slurm.sh start     # install if missing, configure, start, wait until idle
#     bash launch/local_slurm.sh status    # daemons, node state, partition
#     bash launch/local_slurm.sh stop      # end only the daemons this script started
#
# It installs Debian's slurmctld slurmd slurm-client munge when they are missing, writes
# /etc/slurm/slurm.conf (marked as ours; a foreign one is never overwritten) with this
# machine's CPUs and memory as `slurmd -C` reports them, and starts munged, slurmctld and
# slurmd. Jobs run as the submitting user. There is no slurmdbd: see docs/README-sweeps.md
# ("sacct") for why. State, logs and the list of daemons we started live in $STATE_DIR.
# Idempotent: `start` on a running cluster only checks it; `stop` twice is harmless.
set -euo pipefail

STATE_DIR=${MNIST_SLURM_STATE:-/var/tmp/mnist-dist-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by mnist-dist launch/local_slurm.sh"
PARTITION=${MNIST_SLURM_PARTITION:-debug}
OWNED=$STATE_DIR/owned  # "name pid" per daemon this script started

die() { echo "local_slurm: error: $*" >&2; exit 1; }
say() { echo "local_slurm: $*"; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"; }

install_missing() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} = 0 ] && return
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # Debian's postinst may start its own daemons through systemd; those are not ours.
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { [ -f "$1" ] && cat "$1" || true; }

write_conf() {
    local node cpus_line
    node=$(hostname -s)
    # `slurmd -C` prints this machine's NodeName=... CPUs=... RealMemory=... line.
    cpus_line=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$node/")
    mkdir -p /etc/slurm "$STATE_DIR/ctld" "$STATE_DIR/d"
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to replace it"
    fi
    cat >"$CONF.tmp" <<EOF
$MARK
ClusterName=mnistdist
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120): keep requeue fast.
AuthInfo=cred_expire=15
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
# No cgroups in containers: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# Allocate CPUs and memory, so cpus_per_task / mem_gb decide how many trials run at once.
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# No slurmdbd: squeue/scontrol answer for live jobs; trial folders are the record.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Keep finished jobs visible to scontrol for 10 minutes (seconds).
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
# Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued.
KillWait=10
$cpus_line State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if cmp -s "$CONF.tmp" "$CONF"; then rm -f "$CONF.tmp"; return; fi
    mv "$CONF.tmp" "$CONF"
    # Some settings (cred_expire) are read only at startup: restart the daemons we own.
    [ -s "$OWNED" ] && say "slurm.conf changed: restarting our slurm daemons" && stop_owned slurmd slurmctld
    return 0
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    [ -s /etc/munge/munge.key ] || {
        say "creating /etc/munge/munge.key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    }
    if id munge >/dev/null 2>&1; then
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
        runuser -u munge -- munged
    else
        munged --force
    fi
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    echo "munged $(pid_of /run/munge/munged.pid)" >>"$OWNED"
}

start_daemon() {  # name pidfile
    local name=$1 pidfile=$2
    if alive "$(pid_of "$pidfile")"; then return; fi
    if pgrep -x "$name" >/dev/null; then
        say "$name already runs (not started by this script); leaving it"
        return
    fi
    "$name"  # both daemonise and write their pid file
    for _ in $(seq 50); do alive "$(pid_of "$pidfile")" && break; sleep 0.1; done
    alive "$(pid_of "$pidfile")" || die "$name did not start; see $STATE_DIR/$name.log"
    echo "$name $(pid_of "$pidfile")" >>"$OWNED"
}

wait_idle() {
    local node state
    node=$(hostname -s)
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$node" -o %t 2>/dev/null | head -1 || true)
        case "$state" in
            idle | mix | alloc) say "cluster up: node $node $state, partition $PARTITION"; return ;;
            down* | drain* | inval*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    die "node $node did not become idle (state '${state:-none}'); see $STATE_DIR/slurmd.log"
}

cmd_start() {
    need_root
    install_missing
    mkdir -p "$STATE_DIR"
    touch "$OWNED"
    write_conf
    start_munge
    start_daemon slurmctld "$STATE_DIR/slurmctld.pid"
    start_daemon slurmd "$STATE_DIR/slurmd.pid"
    wait_idle
}

stop_owned() {  # names...: end those daemons we recorded (PID still running that name)
    local keep=() name pid
    while read -r name pid; do
        if [[ " $* " == *" $name "* ]]; then
            if alive "$pid" && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
                kill "$pid"
                for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
                say "stopped $name ($pid)"
            fi
        else
            keep+=("$name $pid")
        fi
    done < <(tac "$OWNED")
    printf '%s\n' "${keep[@]}" | tac | sed '/^$/d' >"$OWNED"
}

cmd_stop() {
    [ -s "$OWNED" ] || { say "nothing to stop"; return; }
    stop_owned slurmd slurmctld munged  # slurmd first, munged last
    rm -f "$OWNED"
}

cmd_status() {
    local rc=0
    for d in munged slurmctld slurmd; do
        if pgrep -x "$d" >/dev/null; then echo "$d: running"; else echo "$d: stopped"; rc=1; fi
    done
    if scontrol ping >/dev/null 2>&1; then sinfo; else echo "slurmctld: not answering"; rc=1; fi
    return $rc
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
