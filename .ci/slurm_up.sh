#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for the real-SLURM tests (tests/test_slurm_real.py).
#
#   sudo bash .ci/slurm_up.sh            # idempotent: installs, configures and starts only what is missing
#
# Debian/Ubuntu, as root. Installs slurm-wlm and munge when absent, writes /etc/slurm/slurm.conf from
# .ci/slurm.conf.in (host name, CPUs and memory of this machine), starts munged, slurmctld and slurmd by hand (no
# systemd needed) and waits until the node accepts jobs. It never overwrites a slurm.conf it did not write, so it is
# safe to run on a machine that already belongs to a cluster (it stops there with a message instead).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf=/etc/slurm/slurm.conf
marker="written by .ci/slurm_up.sh"

say() { echo "slurm_up: $*"; }
die() { echo "slurm_up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run me as root (sudo bash .ci/slurm_up.sh): I install packages and start daemons."

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  command -v apt-get >/dev/null || die "no slurmctld/slurmd/munged and no apt-get: install SLURM and munge yourself."
  say "installing slurm-wlm and munge"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

render_conf() {
  local host cpus mem
  host=$(hostname -s); cpus=$(nproc); mem=$(free -m | awk '/^Mem:/{print $2}')
  sed -e "s/@HOST@/$host/g" -e "s/@CPUS@/$cpus/g" -e "s/@MEMORY_MB@/$mem/g" \
      -e "s/@MEM_PER_CPU_MB@/$((mem / cpus))/g" "$here/slurm.conf.in"
}

write_conf() {
  if [ -e "$conf" ] && ! grep -q "$marker" "$conf"; then
    die "$conf exists and was not written by this script: this machine has its own SLURM; use it, or move $conf away."
  fi
  mkdir -p /etc/slurm
  local new; new=$(render_conf)
  if [ -e "$conf" ] && [ "$new" = "$(cat "$conf")" ]; then
    return 1  # unchanged
  fi
  printf '%s\n' "$new" > "$conf"
  say "wrote $conf"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null || die "munged started but munge -n | unmunge fails: see /var/log/munge/munged.log."
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # stop the daemon whose pid file is $1 (one this script started) and wait for it to go
  alive "$1" || return 0
  kill "$(cat "$1")"
  for _ in $(seq 50); do alive "$1" || return 0; sleep 0.2; done
  die "the process in $1 did not stop within 10 s."
}

start_slurm() {
  local changed=$1
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm /run/slurm
  if [ "$changed" = yes ]; then stop_daemon /run/slurm/slurmd.pid; stop_daemon /run/slurm/slurmctld.pid; fi
  alive /run/slurm/slurmctld.pid || slurmctld -i
  alive /run/slurm/slurmd.pid || slurmd
}

wait_for_node() {
  local host state; host=$(hostname -s)
  for _ in $(seq 120); do
    state=$(sinfo -h -N -n "$host" -o %t 2>/dev/null || true)
    case "$state" in
      idle|mix|alloc|comp) say "node $host is $state: cluster up"; return ;;
      down*|drain*|drng*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "node $host is not up after 60 s (state '${state:-unknown}'): see /var/log/slurm/slurmctld.log and slurmd.log."
}

install_packages
if write_conf; then changed=yes; else changed=no; fi
start_munge
start_slurm "$changed"
wait_for_node
