#!/usr/bin/env bash
# A two-slot job queue for long CPU experiments on a 2-core machine.
#
#   bash experiments/queue.sh experiments/queue.txt 2      # 2 workers, one core each (OMP_NUM_THREADS=1)
#
# Each line of the task file is one shell command (typically `python -m bench.run ... --run-id X`); a worker takes the
# first line under a lock, removes it, runs it, and appends it with its exit code to <task file>.done. Lines can be
# appended while the queue runs. Runs are checkpointed every epoch, so a killed queue resumes by re-queueing the
# same commands (same --run-id). Logs: experiments/logs/<run id or line number>.log.
set -u
tasks=${1:?task file}; workers=${2:-2}
mkdir -p experiments/logs
worker() {
  while true; do
    line=$(flock "$tasks.lock" bash -c 'l=$(head -n1 "$0"); [ -n "$l" ] && sed -i 1d "$0"; printf "%s" "$l"' "$tasks")
    [ -z "$line" ] && break
    name=$(printf '%s' "$line" | grep -o -- '--run-id [^ ]*' | cut -d' ' -f2); name=${name:-task$$}
    echo "[$(date -u +%FT%TZ)] worker $1 start $name"
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 bash -c "$line" > "experiments/logs/$name.log" 2>&1
    rc=$?
    echo "$rc $line" >> "$tasks.done"
    echo "[$(date -u +%FT%TZ)] worker $1 end $name rc=$rc"
  done
}
for w in $(seq 1 "$workers"); do worker "$w" & done
wait
