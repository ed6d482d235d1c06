#!/usr/bin/env bash
# Starts N processes of one job on 127.0.0.1: the multi-host code path on a single machine.
#
#   launch/local_multiprocess.sh N CONFIG WORKDIR [--config.field=value ...]
#
# Each process gets DEVICES_PER_PROCESS simulated CPU devices (default 1) and talks to the
# others through JAX's coordination service and gloo CPU collectives. MODULE picks the entry
# point (default diffusionlm.train; e.g. MODULE=diffusionlm.rl). If any process fails, the
# others are stopped and the script exits non-zero.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 N CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
num_processes=$1; config=$2; workdir=$3; shift 3
port=${DIFFUSIONLM_PORT:-$((20000 + RANDOM % 20000))}
module=${MODULE:-diffusionlm.train}
python=${PYTHON:-python}

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}" \
  DIFFUSIONLM_COORDINATOR="127.0.0.1:${port}" \
  DIFFUSIONLM_NUM_PROCESSES="${num_processes}" \
  DIFFUSIONLM_PROCESS_ID="${i}" \
    "${python}" -m "${module}" --config="${config}" --workdir="${workdir}" "$@" &
  pids+=($!)
done
status=0
for ((i = 0; i < num_processes; i++)); do
  if ! wait -n; then status=1; break; fi
done
if [[ $status -ne 0 ]]; then
  echo "local_multiprocess: a process failed; stopping the others." >&2
  exit 1
fi
trap - EXIT
