#!/usr/bin/env bash
# A real SLURM cluster on localhost, for development and CI (run as root).
#
#     bash launch/local_slurm.sh start [--nodes N] [--fresh]  # install, configure, start, wait
#     bash launch/local_slurm.sh status             # daemons, node state, partition
#     bash launch/local_slurm.sh stop               # end only what this script started
#     bash launch/local_slurm.sh install [--nodes N]  # only the Debian packages
#
# It installs Debian's slurmctld slurmd slurm-client munge when they are missing, writes
# /etc/slurm/slurm.conf (marked as ours; a foreign one is never overwritten) with this
# machine's CPUs and memory as `slurmd -C` reports them, and starts munged, slurmctld and
# slurmd. Jobs run as the submitting user. There is no slurmdbd: see README.md ("sacct")
# for why. State, logs and the list of what we started live in $STATE_DIR.
# Idempotent: `start` on a running cluster only checks it; `stop` twice is harmless.
# slurmctld saves its queue in $STATE_DIR, so a cluster started again after the machine went
# down resumes the jobs it had. --fresh drops that saved queue instead, restarting the
# cluster's own daemons if they run: for throwaway test clusters, whose old jobs belong to
# test folders long gone. (The tests' clusters use ports 6827-6828 and 6917-6918.)
#
# --nodes N (default 1) emulates N nodes on this machine: node 0 runs here, in its own UTS
# namespace only; nodes 1..N-1 each get a network and UTS namespace. Every pair of nodes is
# joined by a veth pair, node i answers at $NET.(i+1) under the hostname <cluster>-n<i>
# (an /etc/hosts entry), and each node declares 1/N of the CPUs and memory, so the cluster
# never oversubscribes the machine. Nothing leaves the machine: no bridge, no forwarding.
#
# A second, independent cluster beside the default one: set these (SLURM_CONF must stay
# exported for every sbatch/squeue/scontrol against it); the shared munged is reused.
#     SLURM_CONF=/var/tmp/mn2/slurm.conf MNIST_SLURM_STATE=/var/tmp/mn2 MNIST_SLURM_CLUSTER=mn2 \
#     MNIST_SLURM_CTLD_PORT=6947 MNIST_SLURM_SLURMD_PORT=6948 MNIST_SLURM_NET=10.77.9 \
#     MNIST_SLURM_PARTITION=two bash launch/local_slurm.sh start --nodes 2
set -euo pipefail

STATE_DIR=${MNIST_SLURM_STATE:-/var/tmp/mnist-dist-slurm}
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}  # every SLURM daemon and client reads SLURM_CONF
MARK="# written by mnist-dist launch/local_slurm.sh"
CLUSTER=${MNIST_SLURM_CLUSTER:-mnistdist}  # ClusterName; names the nodes, netns and links
PARTITION=${MNIST_SLURM_PARTITION:-debug}
CTLD_PORT=${MNIST_SLURM_CTLD_PORT:-}  # empty: SLURM's default (6817)
SLURMD_PORT=${MNIST_SLURM_SLURMD_PORT:-}  # empty: SLURM's default (6818), every node
NET=${MNIST_SLURM_NET:-10.77.0}  # --nodes N > 1: node i at $NET.(i+1)
OWNED=$STATE_DIR/owned  # what this script started: "name pid [node]", "netns NAME", "hosts"
HOSTS_TAG="# mnist-dist local_slurm.sh [$CLUSTER]"  # ends our /etc/hosts lines
NODES=1
FRESH=""

die() { echo "local_slurm: error: $*" >&2; exit 1; }
say() { echo "local_slurm: $*"; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"; }

install_missing() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ "$NODES" -gt 1 ] && ! command -v ip >/dev/null && missing+=(iproute2)
    [ ${#missing[@]} = 0 ] && return
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # Debian's postinst may start its own daemons through systemd; those are not ours.
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
# name pid: that daemon runs under this PID (not a PID reused since a reboot)
is_daemon() { alive "$2" && [ "$(cat /proc/"$2"/comm 2>/dev/null)" = "$1" ]; }
running() { is_daemon "$1" "$(pid_of "$2")"; }  # name pidfile
pid_of() { if [ -f "$1" ]; then cat "$1"; fi; }
node_name() { if [ "$NODES" = 1 ]; then hostname -s; else echo "$CLUSTER-n$1"; fi; }
netns_of() { echo "$CLUSTER-n$1"; }  # node i > 0
ip_in() {  # node ip-args...: `ip` in node's network namespace (node 0: this machine's)
    local n=$1
    shift
    if [ "$n" = 0 ]; then ip "$@"; else ip -n "$(netns_of "$n")" "$@"; fi
}

write_conf() {
    local host cpus mem cpus_line ports="" ctld_addr=127.0.0.1 per="" nodes_lines node_list i
    host=$(hostname -s)
    # `slurmd -C` prints this machine's NodeName=... CPUs=... RealMemory=... line.
    cpus_line=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
    [ -n "$CTLD_PORT" ] && ports+="SlurmctldPort=$CTLD_PORT"$'\n'
    [ -n "$SLURMD_PORT" ] && ports+="SlurmdPort=$SLURMD_PORT"$'\n'
    nodes_lines="$cpus_line State=UNKNOWN"
    node_list=$host
    if [ "$NODES" -gt 1 ]; then
        # Each node declares its share of the machine: N nodes never run more than it has.
        cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$cpus_line")
        mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$cpus_line")
        [ "$cpus" -ge "$NODES" ] || die "--nodes $NODES needs $NODES CPUs; this machine has $cpus"
        ctld_addr=$NET.1  # node 0's address: the namespaces reach slurmctld there
        per=-%n  # one slurmd per node: SLURM puts the node name for %n
        nodes_lines="# $NODES emulated nodes, each 1/$NODES of this machine (local_slurm.sh --nodes)"
        for ((i = 0; i < NODES; i++)); do
            nodes_lines+=$'\n'"NodeName=$(node_name "$i") NodeAddr=$NET.$((i + 1))"
            nodes_lines+=" CPUs=$((cpus / NODES)) RealMemory=$((mem / NODES)) State=UNKNOWN"
        done
        node_list="$CLUSTER-n[0-$((NODES - 1))]"
    fi
    mkdir -p "$(dirname "$CONF")" "$STATE_DIR/ctld" "$STATE_DIR/d"
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to replace it"
    fi
    cat >"$CONF.tmp" <<EOT
$MARK
ClusterName=$CLUSTER
${ports}SlurmctldHost=$host($ctld_addr)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120): keep requeue fast.
AuthInfo=cred_expire=15
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d${per/-//}
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd$per.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd$per.log
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
$nodes_lines
PartitionName=$PARTITION Nodes=$node_list Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOT
    if cmp -s "$CONF.tmp" "$CONF"; then rm -f "$CONF.tmp"; return; fi
    mv "$CONF.tmp" "$CONF"
    # Some settings (cred_expire) are read only at startup, and the node set may have
    # changed: restart the daemons we own, on a network rebuilt for the new shape.
    if grep -q '^slurm' "$OWNED"; then
        say "slurm.conf changed: restarting our slurm daemons"
        stop_owned slurmd slurmctld
    fi
    remove_net
    return 0
}

# ---- --nodes N: namespaces, veth pairs, /etc/hosts --------------------------------------

hosts_lines() {
    local i
    for ((i = 0; i < NODES; i++)); do echo "$NET.$((i + 1)) $(node_name "$i") $HOSTS_TAG"; done
}

set_hosts() {  # [--remove]: (re)write our /etc/hosts lines in place (it may be a bind mount)
    local want
    want=$(grep -vF "$HOSTS_TAG" /etc/hosts || true)
    [ "${1:-}" = --remove ] || want+=$'\n'$(hosts_lines)
    [ "$want" = "$(cat /etc/hosts)" ] || printf '%s\n' "$want" >/etc/hosts
}

setup_net() {
    local i j a b tool
    for tool in unshare nsenter; do
        command -v $tool >/dev/null || die "--nodes $NODES needs $tool (util-linux)"
    done
    for ((j = 1; j < NODES; j++)); do
        if [ ! -e "/run/netns/$(netns_of "$j")" ]; then
            ip netns add "$(netns_of "$j")"
            echo "netns $(netns_of "$j")" >>"$OWNED"
        elif ! grep -qx "netns $(netns_of "$j")" "$OWNED"; then
            die "network namespace $(netns_of "$j") exists and was not made by this script"
        fi
        ip_in "$j" link set lo up
    done
    # One veth pair per pair of nodes (i < j): end $CLUSTER-ij in node i, $CLUSTER-ji in j.
    # Each node holds its one address (/32) on every end, with a route to the peer's.
    for ((i = 0; i < NODES; i++)); do
        for ((j = i + 1; j < NODES; j++)); do
            a=$CLUSTER-$i$j b=$CLUSTER-$j$i
            if ! ip_in "$i" link show "$a" >/dev/null 2>&1; then
                ip link del "$a" 2>/dev/null || true  # a half-made pair from an interrupted start
                ip link add "$a" type veth peer name "$b"
                [ "$i" = 0 ] || ip link set "$a" netns "$(netns_of "$i")"
                ip link set "$b" netns "$(netns_of "$j")"
            fi
            ip_in "$i" addr replace "$NET.$((i + 1))/32" dev "$a"
            ip_in "$j" addr replace "$NET.$((j + 1))/32" dev "$b"
            ip_in "$i" link set "$a" up
            ip_in "$j" link set "$b" up
            ip_in "$i" route replace "$NET.$((j + 1))/32" dev "$a"
            ip_in "$j" route replace "$NET.$((i + 1))/32" dev "$b"
        done
    done
    grep -qx hosts "$OWNED" || echo hosts >>"$OWNED"
    set_hosts
}

remove_net() {  # the namespaces (and with them every veth pair) and hosts lines we made
    local kind name pid
    [ -f "$OWNED" ] || return 0
    while read -r kind name _; do
        case $kind in
            netns)
                # Processes of jobs that outlived their slurmd would keep the namespace alive.
                for pid in $(ip netns pids "$name" 2>/dev/null); do
                    kill -KILL "$pid" 2>/dev/null || true
                done
                ip netns del "$name" 2>/dev/null && say "removed network namespace $name"
                ;;
            hosts) set_hosts --remove ;;
        esac
    done <"$OWNED"
    sed -i '/^netns /d; /^hosts$/d' "$OWNED"
}

# ---- daemons --------------------------------------------------------------------------

start_munge() {
    # The key signs every credential: readable by munged's user only, whichever user that
    # is (munge where Debian made one, else root) and whether or not munged already runs.
    local owner=root
    id munge >/dev/null 2>&1 && owner=munge
    [ -s /etc/munge/munge.key ] || {
        say "creating /etc/munge/munge.key"
        (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none)
    }
    chown "$owner:$owner" /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    if [ "$owner" = munge ]; then
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        chown munge:munge /run/munge /var/log/munge /var/lib/munge
        runuser -u munge -- munged
    else
        munged --force
    fi
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    echo "munged $(pid_of /run/munge/munged.pid)" >>"$OWNED"
}

foreign() {  # name [node]: does a $name for our slurm.conf (and node) run, not started by us?
    local pid env conf
    for pid in $(pgrep -x "$1" || true); do
        env=$(tr '\0' '\n' 2>/dev/null </proc/"$pid"/environ) || continue  # it just ended
        conf=$(sed -n 's/^SLURM_CONF=//p' <<<"$env")
        [ "${conf:-/etc/slurm/slurm.conf}" = "$CONF" ] || continue
        if [ -n "${2:-}" ]; then
            tr '\0' ' ' 2>/dev/null </proc/"$pid"/cmdline | grep -q -- "-N $2 " || continue
        fi
        return 0
    done
    return 1
}

start_daemon() {  # name pidfile [node [command prefix...]]
    local name=$1 pidfile=$2 node=${3:-}
    shift $(($# < 3 ? $# : 3))
    if running "$name" "$pidfile"; then return; fi
    if foreign "$name" "$node"; then
        say "$name ${node:+for $node }already runs (not started by this script); leaving it"
        return
    fi
    local log=$STATE_DIR/$name${node:+-$node}.log
    if [ -n "$node" ]; then "$@" "$name" -N "$node"; else "$name"; fi ||
        die "$name failed; see $log"  # it exits once daemonised
    for _ in $(seq 50); do alive "$(pid_of "$pidfile")" && break; sleep 0.1; done
    alive "$(pid_of "$pidfile")" || die "$name did not start; see $log"
    echo "$name $(pid_of "$pidfile")${node:+ $node}" >>"$OWNED"
}

start_slurmds() {
    local i node
    if [ "$NODES" = 1 ]; then start_daemon slurmd "$STATE_DIR/slurmd.pid"; return; fi
    for ((i = 0; i < NODES; i++)); do
        node=$(node_name "$i")
        # Own hostname (UTS namespace), so that jobs there see the node's name and torch's
        # gloo binds to its address; node 0 shares this machine's network, the others not.
        # shellcheck disable=SC2016  # $1 and $@ are the inner shell's
        local prefix=(unshare --uts sh -c 'hostname "$1" && shift && exec "$@"' sh "$node")
        # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mount slurmd
        # reads.
        [ "$i" = 0 ] || prefix=(nsenter --net="/run/netns/$(netns_of "$i")" "${prefix[@]}")
        mkdir -p "$STATE_DIR/d/$node"
        start_daemon slurmd "$STATE_DIR/slurmd-$node.pid" "$node" "${prefix[@]}"
    done
}

wait_idle() {
    local i node state waiting up
    for _ in $(seq 60); do
        waiting="" up=""
        for ((i = 0; i < NODES; i++)); do
            node=$(node_name "$i")
            state=$(sinfo -h -n "$node" -o %t 2>/dev/null | head -1 || true)
            case "$state" in
                idle | mix | alloc) up+=" $node $state," && continue ;;
                down* | drain* | inval*)
                    scontrol update nodename="$node" state=resume 2>/dev/null || true
                    ;;
            esac
            waiting+=" $node (${state:-none})"
        done
        if [ -z "$waiting" ]; then
            say "cluster up: node${up%,}, partition $PARTITION"
            return
        fi
        sleep 0.5
    done
    die "node(s)$waiting did not become idle; see $STATE_DIR/slurmd*.log"
}

secure_state() {
    # Root's daemons read their config and spools here, in /var/tmp: a folder another user
    # made first (or can write) could feed them theirs.
    if [ -e "$STATE_DIR" ] || [ -L "$STATE_DIR" ]; then
        { [ -d "$STATE_DIR" ] && [ ! -L "$STATE_DIR" ]; } \
            || die "$STATE_DIR is not a folder; remove it, or set MNIST_SLURM_STATE"
        local uid
        uid=$(stat -c %u "$STATE_DIR")
        [ "$uid" = 0 ] || die "$STATE_DIR belongs to uid $uid, not root (another user may" \
            "have made it); remove it, or set MNIST_SLURM_STATE to a new folder"
    else
        mkdir -p "$(dirname "$STATE_DIR")" && mkdir -m 0755 "$STATE_DIR"
    fi
    chmod go-w "$STATE_DIR"
}

cmd_start() {
    need_root
    install_missing
    secure_state
    touch "$OWNED"
    write_conf
    [ "$NODES" = 1 ] || setup_net
    start_munge
    if [ -n "$FRESH" ]; then  # an empty queue, even if a killed run left ours running
        stop_owned slurmd slurmctld
        rm -rf "${STATE_DIR:?}/ctld" "${STATE_DIR:?}/d"  # the saved queue and node spools
        mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/d"
    fi
    start_daemon slurmctld "$STATE_DIR/slurmctld.pid"
    start_slurmds
    wait_idle
}

stop_owned() {  # names...: end those daemons we recorded (PID still running that name)
    local keep=() name pid rest
    while read -r name pid rest; do
        if [[ " $* " == *" $name "* ]]; then
            if is_daemon "$name" "$pid"; then
                kill "$pid"
                for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
                say "stopped $name${rest:+ $rest} ($pid)"
            fi
        else
            keep+=("$name${pid:+ $pid}${rest:+ $rest}")
        fi
    done < <(tac "$OWNED")
    printf '%s\n' "${keep[@]}" | tac | sed '/^$/d' >"$OWNED"
}

cmd_stop() {
    [ -s "$OWNED" ] || { say "nothing to stop"; return; }
    stop_owned slurmd slurmctld  # slurmd first
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        say "leaving munged: another cluster's daemons still use it"
    else
        stop_owned munged
    fi
    if grep -q '^netns ' "$OWNED" && grep -qF "$MARK" "$CONF"; then
        # It names addresses that go with the namespaces: a client reading it later would
        # send to them through the default route, off this machine.
        rm -f "$CONF" && say "removed $CONF (its node addresses are gone)"
    fi
    remove_net
    rm -f "$OWNED"
}

cmd_status() {
    local rc=0 name pidfile
    if pgrep -x munged >/dev/null; then echo "munged: running"; else echo "munged: stopped" && rc=1; fi
    for pidfile in "$STATE_DIR/slurmctld.pid" "$STATE_DIR"/slurmd*.pid; do
        name=$(basename "$pidfile" .pid)
        [ -e "$pidfile" ] || [ "$name" = slurmctld ] || name=slurmd  # no slurmd pid file
        if alive "$(pid_of "$pidfile")"; then
            echo "$name: running"
        elif foreign "${name%%-*}"; then
            echo "$name: running (not started by this script)"
        else
            echo "$name: stopped" && rc=1
        fi
    done
    ip netns list 2>/dev/null | grep "^$CLUSTER-n" | sed 's/^/network namespace: /' || true
    if scontrol ping >/dev/null 2>&1; then sinfo; else echo "slurmctld: not answering"; rc=1; fi
    return $rc
}

usage() { echo "usage: $0 start [--nodes N] [--fresh] | stop | status | install [--nodes N]" >&2; exit 2; }

cmd=${1:-}
[ $# = 0 ] || shift
while [ $# -gt 0 ]; do
    case $1 in
        --nodes) [ $# -ge 2 ] || usage; NODES=$2; shift 2 ;;
        --nodes=*) NODES=${1#--nodes=}; shift ;;
        --fresh) FRESH=1; shift ;;
        *) usage ;;
    esac
done
[[ $NODES =~ ^[1-9]$ ]] || die "--nodes takes a number from 1 to 9, got '$NODES'"
[[ $NET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "MNIST_SLURM_NET: like 10.77.0, got '$NET'"
[[ $CLUSTER =~ ^[a-z0-9]{1,10}$ ]] || die "MNIST_SLURM_CLUSTER: 1-10 of a-z 0-9, got '$CLUSTER'"

case "$cmd" in
    start) cmd_start ;;
    install) need_root && install_missing ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
