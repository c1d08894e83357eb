#!/usr/bin/env bash
# A single-node Slurm on this machine, for trying `testbed sweep --executor slurm`
# and for its test: munged, mariadbd + slurmdbd (submitit reads job states with
# sacct), slurmctld and slurmd, all as root, all state under one folder.
#
#   scripts/slurm-local.sh install   # apt-get the Debian packages (slurm-wlm munge mariadb-server slurmdbd)
#   scripts/slurm-local.sh start     # idempotent; prints 'export SLURM_CONF=...'
#   scripts/slurm-local.sh status    # exit 0 if the node answers and is usable
#   scripts/slurm-local.sh env       # prints 'export SLURM_CONF=...'
#   scripts/slurm-local.sh stop      # stops the daemons it started, by their pids (slurmd first, munged last)
#
# No systemd or cgroups: proctrack/linuxproc, task/none. Settings (environment):
#   TESTBED_SLURM_DIR   state folder (default /tmp/testbed-slurm-$UID)
#   TESTBED_SLURM_PORT  first of four TCP ports: slurmctld, slurmd, slurmdbd, mariadbd (default 16817)
# Clients need SLURM_CONF=$TESTBED_SLURM_DIR/etc/slurm.conf (also in $TESTBED_SLURM_DIR/env).
set -euo pipefail

DIR=${TESTBED_SLURM_DIR:-/tmp/testbed-slurm-$(id -u)}
PORT=${TESTBED_SLURM_PORT:-16817}
CTLD_PORT=$PORT; SLURMD_PORT=$((PORT + 1)); DBD_PORT=$((PORT + 2)); DB_PORT=$((PORT + 3))
ETC=$DIR/etc; RUN=$DIR/run; LOG=$DIR/log
MUNGE_SOCKET=$RUN/munge/munge.socket
export SLURM_CONF=$ETC/slurm.conf
NODE=$(hostname -s)
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"

die() { echo "slurm-local: $*" >&2; exit 1; }
log() { echo "slurm-local: $*" >&2; }

running() {     # pid -> 0 if it runs (a zombie waiting for its reaper does not)
    kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}

pid_alive() {   # pidfile -> 0 if the process it names runs
    [ -s "$1" ] && running "$(cat "$1")"
}

wait_for() {    # seconds, description, command...
    local t=$1 what=$2; shift 2
    local end=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || { log "$what did not come up in ${t} s; its log:"; tail -n 20 "$LOG/$what.log" >&2 || true; return 1; }
        sleep 0.2
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_ready() {  # the node answers and is idle, mixed or allocated
    timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

cmd_install() {
    local need=()
    for bin in slurmctld:slurm-wlm munged:munge mariadbd:mariadb-server slurmdbd:slurmdbd; do
        command -v "${bin%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${bin%%:*}" ] || need+=("${bin##*:}")
    done
    [ ${#need[@]} -eq 0 ] && { log "packages already installed"; return 0; }
    [ "$(id -u)" -eq 0 ] || die "installing ${need[*]} needs root"
    command -v apt-get >/dev/null || die "no apt-get: install ${need[*]} by hand"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
}

write_configs() {
    mkdir -p "$ETC" "$RUN/munge" "$LOG" "$DIR/state" "$DIR/spool" "$DIR/munge" "$DIR/db"
    chmod 755 "$RUN/munge"        # munge clients must reach the socket
    [ -s "$DIR/munge/munge.key" ] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; }
    chmod 700 "$DIR/munge"; chmod 400 "$DIR/munge/munge.key"
    [ -s "$DIR/db.pass" ] || { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/db.pass"; chmod 600 "$DIR/db.pass"; }
    cat > "$ETC/slurm.conf" <<EOF
ClusterName=testbed
SlurmctldHost=$NODE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$NODE CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmdbd ignores -f: it reads slurmdbd.conf beside $SLURM_CONF, and only if its mode is 600
    cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$DIR/db.pass")
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"
    {
        echo "export SLURM_CONF=$SLURM_CONF"
    } > "$DIR/env"
}

start_munged() {
    pid_alive "$RUN/munged.pid" && return 0
    munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$RUN/munged.pid" \
        --log-file="$LOG/munged.log" --seed-file="$DIR/munge/munge.seed"
    wait_for 10 munged test -S "$MUNGE_SOCKET"
}

db() { mariadb --no-defaults --socket="$RUN/mysqld.sock" -u root "$@"; }

start_mariadbd() {
    pid_alive "$RUN/mariadbd.pid" && return 0
    if [ ! -d "$DIR/db/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$DIR/db" --user=root --skip-test-db \
            > "$LOG/mariadb-install.log" 2>&1 || { tail -n 20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    setsid mariadbd --no-defaults --datadir="$DIR/db" --user=root --bind-address=127.0.0.1 --port="$DB_PORT" \
        --socket="$RUN/mysqld.sock" --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadbd.log" \
        --skip-log-bin --innodb-buffer-pool-size=32M < /dev/null > /dev/null 2>&1 &
    wait_for 30 mariadbd db -e "select 1"
    db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$DIR/db.pass")';
           CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$(cat "$DIR/db.pass")';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
    pid_alive "$RUN/slurmdbd.pid" && return 0
    slurmdbd > "$LOG/slurmdbd.out" 2>&1
    wait_for 30 slurmdbd port_open "$DBD_PORT"
}

start_slurmctld() {
    pid_alive "$RUN/slurmctld.pid" && return 0
    slurmctld -i > "$LOG/slurmctld.out" 2>&1
    wait_for 30 slurmctld port_open "$CTLD_PORT"
}

start_slurmd() {
    pid_alive "$RUN/slurmd.pid" && return 0
    slurmd > "$LOG/slurmd.out" 2>&1
    wait_for 30 slurmd node_ready
}

cmd_start() {
    [ "$(id -u)" -eq 0 ] || die "start needs root (the daemons run as root here)"
    for bin in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo; do
        command -v "$bin" >/dev/null 2>&1 || die "$bin not found: run '$0 install' (Debian: slurm-wlm munge mariadb-server slurmdbd)"
    done
    write_configs
    start_munged
    start_mariadbd
    start_slurmdbd
    start_slurmctld
    start_slurmd
    if ! node_ready; then
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        wait_for 15 slurmd node_ready
    fi
    echo "export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    local name pidfile pid
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        pidfile=$RUN/$name.pid
        pid_alive "$pidfile" || { rm -f "$pidfile"; continue; }
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
        running "$pid" && { log "$name ($pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
        rm -f "$pidfile"
    done
}

cmd_status() {
    local name up=0
    for name in $DAEMONS; do
        if pid_alive "$RUN/$name.pid"; then echo "$name: running ($(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; up=1; fi
    done
    # no sinfo (and its timeout) while a daemon is down
    if [ $up -eq 0 ] && node_ready; then echo "node $NODE: ready"; else echo "node $NODE: not ready"; up=1; fi
    return $up
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
