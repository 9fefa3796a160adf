#!/usr/bin/env bash
# Queue every command line of a list file (comments and blank lines skipped) on two one-thread workers:
#   bash experiments/run_list.sh experiments/flowgrpo_search.txt [workers]
#   SNAPSHOT=../snap bash experiments/run_list.sh ...   # run the code of a frozen worktree, write results here
set -u
cd "$(dirname "$0")/.."
here=$(pwd)
q=experiments/queue.txt
mkdir -p experiments/logs
if [ -n "${SNAPSHOT:-}" ]; then
  snap=$(cd "$SNAPSHOT" && pwd)
  grep -v -e '^#' -e '^[[:space:]]*$' "$1" \
    | sed -e "s#^python #cd $snap \&\& $here/.venv/bin/python #" -e "s#--out results/#--out $here/results/#" >> "$q"
else
  grep -v -e '^#' -e '^[[:space:]]*$' "$1" | sed 's#^python #.venv/bin/python #' >> "$q"
fi
exec bash experiments/queue.sh "$q" "${2:-2}"
