#!/bin/sh
# A test cluster on one machine: 2 to 4 "hosts" ldm-node0..ldm-nodeN-1, each a
# network namespace with its own address (10.77.0.1, .2, ...) on a private
# switch (a bridge in its own namespace, joined by veth pairs: nothing is added
# to this machine's own network stack), its own host name (a UTS namespace made
# for each process started there) and its own /etc/hosts naming all of them.
# Open MPI starts its daemons on the hosts through an rsh agent that enters the
# host's namespaces (launch/netns-rsh.sh) and is pinned to the cluster's subnet
# (oob and btl TCP), so ranks on different hosts talk over real TCP between
# separate network stacks, and per-node logic (local rank, per-node device
# choice, per-node logging) sees separate nodes. Needs root.
#
#   launch/cluster.sh up HOSTS                 create the hosts (2..4); idempotent
#   launch/cluster.sh down                     remove everything `up` made, killing
#                                              what still runs there; idempotent
#   launch/cluster.sh status                   the hosts and the processes on them
#   launch/cluster.sh exec HOST -- CMD ...     run CMD on host HOST (0..3)
#   launch/cluster.sh mpirun HOSTS RANKS_PER_HOST [MPIRUN_OPTIONS ...] -- PROGRAM ARGS ...
#                                              mpirun from host 0 over hosts 0..HOSTS-1
#                                              (1 .. the cluster's size)
#   launch/cluster.sh run HOSTS RANKS_PER_HOST [MPIRUN_OPTIONS ...] -- PROGRAM ARGS ...
#                                              up, mpirun, down (also after a failure)
#   launch/cluster.sh check                    exit 0 if network namespaces can be made
#                                              here, else print why and exit 77
#
# e.g. launch/cluster.sh run 2 2 -- build/ldm train --config configs/tiny.json --data d.h5 --run runs/x
#
# LDM_CLUSTER_READONLY=DIR: hosts other than ldm-node0 see DIR read-only (a
# test that only rank 0, on host 0, writes a run directory).
# LDM_CLUSTER_ID (default "ldm") names the namespaces (ID-node0.., ID-sw), so
# that several clusters (tests running side by side) do not meet; the hosts are
# called ldm-node0.. in each. The file system is shared by all hosts, as a
# cluster's shared file system would be. The generated hostfile and agent are in
# /run/ldm-cluster/ID/.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
id=${LDM_CLUSTER_ID:-ldm}
case "$id" in
  ''|*[!A-Za-z0-9_.-]*) echo "cluster.sh: LDM_CLUSTER_ID must be letters, digits, . _ -, got '$id'" >&2; exit 2 ;;
esac
state=/run/ldm-cluster/$id
switch_ns=$id-sw
subnet=10.77.0
max_hosts=4

usage() {
  sed -n '2,/^set -eu/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

die() { echo "cluster.sh: $*" >&2; exit 2; }

host_count() {
  case "${1:-}" in
    2|3|4) echo "$1" ;;
    *) die "HOSTS must be 2, 3 or 4, got '${1:-}'" ;;
  esac
}

node_ns() { echo "$id-node$1"; }

# Whether namespaces can be made here (root, ip, a kernel and container that
# allow it): exit 77 with the reason if not, which ctest reports as skipped.
check() {
  if [ "$(id -u)" != 0 ]; then echo "cluster.sh: skipped: needs root (network namespaces)" >&2; exit 77; fi
  command -v ip >/dev/null 2>&1 || { echo "cluster.sh: skipped: no 'ip' command (iproute2)" >&2; exit 77; }
  command -v unshare >/dev/null 2>&1 || { echo "cluster.sh: skipped: no 'unshare' command" >&2; exit 77; }
  probe=$id-probe$$
  if ! err=$(ip netns add "$probe" 2>&1); then
    echo "cluster.sh: skipped: 'ip netns add' is not allowed here: $err" >&2; exit 77
  fi
  ok=1
  err=$(ip netns exec "$probe" unshare --uts sh -c 'hostname ldm-probe && ip link set lo up' 2>&1) || ok=0
  if [ "$ok" = 1 ]; then
    err=$(ip link add ldmprobe$$ netns "$probe" type veth peer name ldmprobe$$b netns "$probe" 2>&1) || ok=0
  fi
  ip netns del "$probe" 2>/dev/null || true
  if [ "$ok" = 0 ]; then echo "cluster.sh: skipped: namespaces cannot be set up here: $err" >&2; exit 77; fi
}

up() {
  n=$(host_count "${1:-}")
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
  if [ -f "$state/hosts" ] && [ "$(cat "$state/size" 2>/dev/null)" = "$n" ]; then return 0; fi
  down
  # A failure half-way leaves nothing behind.
  trap 'status=$?; [ "$status" = 0 ] || down; exit "$status"' EXIT
  mkdir -p "$state"
  # The switch: a bridge in its own namespace.
  ip netns add "$switch_ns"
  ip -n "$switch_ns" link add br0 type bridge
  ip -n "$switch_ns" link set br0 up
  : > "$state/hosts"
  echo "127.0.0.1 localhost" >> "$state/hosts"
  i=0
  while [ "$i" -lt "$n" ]; do
    echo "$subnet.$((i + 1)) ldm-node$i" >> "$state/hosts"
    i=$((i + 1))
  done
  : > "$state/hostfile"
  i=0
  while [ "$i" -lt "$n" ]; do
    ns=$(node_ns "$i")
    ip netns add "$ns"
    # eth0 inside the host, port$i on the switch; made directly in their
    # namespaces so no name is ever taken in this machine's own stack.
    ip link add eth0 netns "$ns" type veth peer name "port$i" netns "$switch_ns"
    ip -n "$switch_ns" link set "port$i" master br0 up
    ip -n "$ns" addr add "$subnet.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # `ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts: every
    # host resolves every other by name, as on a cluster.
    mkdir -p "/etc/netns/$ns"
    cp "$state/hosts" "/etc/netns/$ns/hosts"
    i=$((i + 1))
  done
  echo "$n" > "$state/size"
  # The agent Open MPI runs as "ssh HOST COMMAND": this cluster's id baked in.
  cat > "$state/rsh-agent" <<EOF
#!/bin/sh
LDM_CLUSTER_ID='$id' exec sh '$here/netns-rsh.sh' "\$@"
EOF
  chmod +x "$state/rsh-agent"
  # Wait until every link is up (veth links come up asynchronously; a bridge
  # without STP forwards as soon as its ports are up).
  i=0
  while [ "$i" -lt "$n" ]; do
    tries=0
    until ip -n "$(node_ns "$i")" -o link show eth0 | grep -q 'state UP' &&
          ip -n "$switch_ns" -o link show "port$i" | grep -q 'state UP'; do
      tries=$((tries + 1))
      [ "$tries" -lt 50 ] || die "the link of ldm-node$i does not come up"
      sleep 0.1
    done
    i=$((i + 1))
  done
  trap - EXIT
  echo "cluster $id: $n hosts ldm-node0..ldm-node$((n - 1)) on $subnet.0/24" >&2
}

# Kills what runs in a namespace: its processes would otherwise keep it alive.
kill_in() {
  pids=$(ip netns pids "$1" 2>/dev/null || true)
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
}

down() {
  i=0
  while [ "$i" -lt "$max_hosts" ]; do
    ns=$(node_ns "$i")
    if [ -e "/run/netns/$ns" ]; then
      kill_in "$ns"
      ip netns del "$ns" 2>/dev/null || true
    fi
    rm -rf "/etc/netns/$ns"
    i=$((i + 1))
  done
  if [ -e "/run/netns/$switch_ns" ]; then ip netns del "$switch_ns" 2>/dev/null || true; fi
  rm -rf "$state"
  # The parents too, once no other cluster uses them.
  rmdir /etc/netns /run/ldm-cluster 2>/dev/null || true
}

require_up() {
  [ -f "$state/size" ] || die "no cluster '$id' (run: $0 up HOSTS)"
}

# exec HOST -- CMD ...: the command on that host, with its name.
on_host() {
  require_up
  h=${1:-}; shift || true
  case "$h" in ''|*[!0-9]*) die "HOST must be a number, got '$h'" ;; esac
  [ "$h" -lt "$(cat "$state/size")" ] || die "host $h: the cluster has $(cat "$state/size") hosts"
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "exec: no command"
  exec ip netns exec "$(node_ns "$h")" unshare --uts sh -c 'hostname "$0" && exec "$@"' "ldm-node$h" "$@"
}

# mpirun HOSTS RANKS_PER_HOST [OPTIONS] -- PROGRAM ARGS: started on host 0, as a
# user would start it on the first node of an allocation.
cluster_mpirun() {
  require_up
  hosts=${1:-}
  case "$hosts" in 1|2|3|4) ;; *) die "HOSTS must be 1 to 4, got '$hosts'" ;; esac
  per_host=${2:-}
  case "$per_host" in ''|*[!0-9]*|0) die "RANKS_PER_HOST must be a positive integer, got '$per_host'" ;; esac
  shift 2
  [ "$hosts" -le "$(cat "$state/size")" ] || die "$hosts hosts asked for, the cluster has $(cat "$state/size")"
  : > "$state/hostfile"
  i=0
  while [ "$i" -lt "$hosts" ]; do
    echo "ldm-node$i slots=$per_host" >> "$state/hostfile"
    i=$((i + 1))
  done
  # Options for mpirun up to "--", then the program.
  options=""
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    options="$options '$(printf '%s' "$1" | sed "s/'/'\\\\''/g")'"
    shift
  done
  [ "${1:-}" = "--" ] || die "mpirun: expected -- before the program"
  shift
  [ $# -gt 0 ] || die "mpirun: no program"
  root_flags=""
  if [ "$(id -u)" = 0 ]; then root_flags="--allow-run-as-root"; fi
  # pml ob1 with the TCP, shared-memory and self BTLs, and the out-of-band
  # channel, all on the cluster subnet only; no tree spawn (every daemon is
  # started from host 0 through the agent); ranks fill host 0 first (slot
  # mapping), so ranks 0..k-1 are on ldm-node0. TCP keepalive on the daemons'
  # connections after 8 s idle (Open MPI's default: 300 s, then 9 x 20 s), so
  # that a host that drops off the network (no process exit to report) ends
  # the job in ~16 s rather than ~8 minutes. ldm's own watch of its ranks
  # (comm.h) notices first, in ~11 s, names the lost rank, and leaves mpirun
  # 10 s to end the job: this must come between the two.
  eval "set -- $options \"\$@\""
  # shellcheck disable=SC2086
  ip netns exec "$(node_ns 0)" unshare --uts sh -c 'hostname ldm-node0 && exec "$@"' sh \
    "${MPIRUN:-mpirun}" $root_flags --oversubscribe --bind-to none \
    --hostfile "$state/hostfile" -np $((hosts * per_host)) --map-by slot \
    --mca plm_rsh_agent "$state/rsh-agent" --mca plm_rsh_no_tree_spawn 1 \
    --mca oob_tcp_if_include "$subnet.0/24" --mca btl_tcp_if_include "$subnet.0/24" \
    --mca pml ob1 --mca btl self,vader,tcp \
    --mca oob_tcp_keepalive_time 8 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 4 \
    -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$@"
}

status() {
  if [ ! -f "$state/size" ]; then echo "no cluster '$id'"; return 0; fi
  n=$(cat "$state/size")
  i=0
  while [ "$i" -lt "$n" ]; do
    ns=$(node_ns "$i")
    echo "ldm-node$i ($ns, $subnet.$((i + 1))): $(ip netns pids "$ns" 2>/dev/null | wc -l) processes"
    i=$((i + 1))
  done
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  up) up "$@" ;;
  down) down ;;
  status) status ;;
  check) check ;;
  exec) on_host "$@" ;;
  mpirun) cluster_mpirun "$@" ;;
  run)
    hosts=$(host_count "${1:-}")
    up "$hosts"
    # Whatever happens now (a failing program, Ctrl-C), the cluster is removed.
    trap 'down' EXIT
    trap 'exit 130' INT TERM
    status=0
    cluster_mpirun "$@" || status=$?
    exit "$status"
    ;;
  *) usage ;;
esac
