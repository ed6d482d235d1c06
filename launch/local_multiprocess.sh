#!/usr/bin/env bash
# Starts N processes of one job on 127.0.0.1: the multi-host code path on a single machine.
#
#   launch/local_multiprocess.sh N CONFIG WORKDIR [--config.field=value ...]
#
# Each process gets DEVICES_PER_PROCESS simulated CPU devices (default 1) and talks to the
# others through JAX's coordination service and gloo CPU collectives. MODULE picks the entry
# point (default diffusionlm.train; e.g. MODULE=diffusionlm.rl).
#
# The processes stop together:
# - If one process exits with an error or is killed, the script names it and kills the
#   others at once (their process groups, so nothing they started survives). Checkpoints are
#   written atomically, so the newest complete one is intact; rerunning resumes from it.
# - SIGTERM or SIGINT to this script (a preemption, Ctrl-C) is passed to every process as
#   SIGTERM: each saves a checkpoint at the next step and exits, and the script waits.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 N CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
num_processes=$1; config=$2; workdir=$3; shift 3
port=${DIFFUSIONLM_PORT:-$((20000 + RANDOM % 20000))}
module=${MODULE:-diffusionlm.train}
python=${PYTHON:-python}

set -m  # Job control: every process leads its own process group.
pids=()
signal_all() {
  local pid
  for pid in "${pids[@]}"; do kill "-$1" -- "-${pid}" 2>/dev/null || true; done
}
preempted() {
  echo "local_multiprocess: received a stop signal; asking every process to save and exit." >&2
  signal_all TERM
  wait || true
  exit 143
}
trap preempted TERM INT
trap 'signal_all KILL' EXIT

for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}" \
  DIFFUSIONLM_COORDINATOR="127.0.0.1:${port}" \
  DIFFUSIONLM_NUM_PROCESSES="${num_processes}" \
  DIFFUSIONLM_PROCESS_ID="${i}" \
    "${python}" -m "${module}" --config="${config}" --workdir="${workdir}" "$@" &
  pids+=($!)
  echo "local_multiprocess: process ${i} is pid $!" >&2
done
set +m  # The groups exist; without job control bash prints no job notices of its own.

for ((running = num_processes; running > 0; running--)); do
  status=0
  wait -n -p finished "${pids[@]}" || status=$?
  if [[ $status -ne 0 ]]; then
    for ((i = 0; i < num_processes; i++)); do [[ ${pids[i]} == "$finished" ]] && break; done
    echo "local_multiprocess: process ${i} (pid ${finished}) exited with status ${status};" \
         "stopping the other $((running - 1)) now. The newest complete checkpoint in" \
         "${workdir}/checkpoints is intact; rerun the same command to resume." >&2
    exit 1
  fi
done
trap - EXIT
