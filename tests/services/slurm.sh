#!/usr/bin/env bash
# Private single-node SLURM cluster for tests (root only).
#   slurm.sh start DIR  -> installs Debian slurmctld/slurmd/munge if missing, writes DIR/slurm.conf,
#                          starts munged (if not running), slurmctld and slurmd, waits for the node,
#                          prints the path of slurm.conf (export SLURM_CONF=<it> for the clients)
#   slurm.sh stop DIR   -> cancels its jobs and stops its daemons
# No accounting storage: `sacct` warns/fails by design; callers must not depend on it.
set -euo pipefail

cmd="${1:-}"; dir="${2:-}"
if [[ -z "$cmd" || -z "$dir" ]]; then echo "usage: $0 start|stop DIR" >&2; exit 64; fi
if [[ "$(id -u)" != 0 ]]; then echo "the test SLURM cluster runs as root (slurmd needs it)" >&2; exit 2; fi

case "$cmd" in
start)
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null; then
        echo "installing Debian slurmctld slurmd munge ..." >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd munge slurm-client) >&2 \
            || { echo "apt-get install slurm failed" >&2; exit 2; }
    fi
    mkdir -p "$dir/state" "$dir/spool"
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
    read -r p1 p2 < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
    cat > "$dir/slurm.conf" <<CONF
ClusterName=parcaetest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$p1
SlurmdPort=$p2
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobRequeue=1
KillWait=10
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    if ! pgrep -x munged >/dev/null; then
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        [[ -s /etc/munge/munge.key ]] || mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1k count=1 2>/dev/null
        chmod 600 /etc/munge/munge.key
        munged --force >&2
    fi
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$dir/slurm.conf" -c >&2
    slurmd -f "$dir/slurm.conf" >&2
    for _ in $(seq 1 60); do
        if sinfo -h -o "%t" 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; then echo "$dir/slurm.conf"; exit 0; fi
        sleep 1
    done
    echo "SLURM node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    exit 2
    ;;
stop)
    export SLURM_CONF="$dir/slurm.conf"
    scancel --full -u root 2>/dev/null || true
    for f in slurmd slurmctld; do
        if [[ -s "$dir/$f.pid" ]]; then kill "$(cat "$dir/$f.pid")" 2>/dev/null || true; fi
    done
    ;;
*) echo "unknown command $cmd" >&2; exit 64 ;;
esac
