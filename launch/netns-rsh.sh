#!/bin/sh
# The "ssh" of the test cluster (launch/cluster.sh): Open MPI runs it as its
# plm_rsh_agent, `netns-rsh.sh [ssh options] HOST COMMAND...`, to start its
# daemon on HOST. HOST ldm-nodeK is the network namespace LDM_CLUSTER_ID-nodeK:
# the command runs there (`ip netns exec`, which also puts that host's
# /etc/hosts in place) in a UTS namespace of its own named HOST, through
# `sh -c` like a remote shell would. The daemon's ranks inherit both, and the
# environment of mpirun (a real ssh would not pass it on: use mpirun -x there).
# LDM_CLUSTER_READONLY=DIR: DIR is mounted read-only for this daemon and its
# ranks (in the mount namespace `ip netns exec` makes), so that a test sees
# whether any rank here writes to it.
set -eu
id=${LDM_CLUSTER_ID:?netns-rsh.sh: LDM_CLUSTER_ID is not set (run through launch/cluster.sh)}
# ssh-style options that Open MPI may put before the host (-x: no X11 forwarding, ...).
while [ $# -gt 0 ]; do
  case "$1" in
    -[1246AaCfGgKkMNnqsTtVvXxYy]*) shift ;;
    -[BbcDEeFIiJLlmOopQRSWw]) shift 2 ;;
    *) break ;;
  esac
done
host=${1:?usage: netns-rsh.sh HOST COMMAND...}
shift
case "$host" in
  ldm-node[0-9]) ns=$id-node${host#ldm-node} ;;
  *) echo "netns-rsh.sh: unknown host '$host' (expected ldm-node0..3)" >&2; exit 255 ;;
esac
[ -e "/run/netns/$ns" ] || { echo "netns-rsh.sh: host $host is not up (no namespace $ns)" >&2; exit 255; }
exec ip netns exec "$ns" unshare --uts sh -c '
  hostname "$0" || exit 255
  if [ -n "${LDM_CLUSTER_READONLY:-}" ]; then
    mount --bind "$LDM_CLUSTER_READONLY" "$LDM_CLUSTER_READONLY" &&
      mount -o remount,bind,ro "$LDM_CLUSTER_READONLY" "$LDM_CLUSTER_READONLY" || exit 255
  fi
  exec sh -c "$*"' "$host" "$@"
