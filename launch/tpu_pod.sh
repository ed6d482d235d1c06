#!/usr/bin/env bash
# Runs one job on every worker of a Cloud TPU VM (pod slice): one process per worker host.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]
#
# Each worker runs `python -m $MODULE --config=CONFIG --workdir=WORKDIR [flags]` inside
# REPO_DIR with DIFFUSIONLM_DISTRIBUTED=auto, so jax.distributed.initialize() takes the
# coordinator and the worker's index from the TPU VM metadata. CONFIG, data and init_from
# paths are read on every worker: keep them at the same path on each (a shared filesystem,
# or copy them in PRELUDE). WORKDIR must be one place all workers write to: a shared
# filesystem or a gs:// bucket.
#
# Environment:
#   MODULE=diffusionlm.train   or diffusionlm.rl
#   REPO_DIR=diffusionlm       the checkout on the workers, relative to the home directory
#   SETUP=1                    first bring REPO_DIR to REF (cloning REPO_URL if it is missing),
#                              make REPO_DIR/.venv and pip install the package with jax[tpu]
#   REPO_URL, REF=main         what SETUP=1 clones / checks out
#   PRELUDE='cmd; ...'         shell commands run on every worker before the job (inside
#                              REPO_DIR, after SETUP), e.g. copying data from a bucket
#   DETACH=1                   run the job under nohup, output in REPO_DIR/logs/JOB.log on
#                              each worker, and return once it has started everywhere
#   PROJECT                    gcloud project (default: gcloud's configured one)
#   DRY_RUN=1                  print the gcloud command instead of running it
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
module=${MODULE:-diffusionlm.train}
repo_dir=${REPO_DIR:-diffusionlm}
job="${module##*.}-$(date +%Y%m%d-%H%M%S)"

# The job's words, quoted for the workers' bash whatever characters they hold.
printf -v job_args '%q ' --config="${config}" --workdir="${workdir}" "$@"

remote="set -eo pipefail; cd ~"
if [[ "${SETUP:-0}" == 1 ]]; then
  printf -v clone 'git clone %q %q' "${REPO_URL:?SETUP=1 needs REPO_URL}" "${repo_dir}"
  printf -v checkout 'git fetch --quiet origin && git checkout --quiet %q' "${REF:-main}"
  checkout+=" && { git pull --quiet --ff-only 2>/dev/null || true; }"  # A tag or commit: no pull.
  remote+="; [[ -d $(printf %q "${repo_dir}")/.git ]] || ${clone}"
  remote+="; cd $(printf %q "${repo_dir}") && ${checkout}"
  remote+="; [[ -d .venv ]] || python3 -m venv .venv"
  remote+="; .venv/bin/pip install --quiet --upgrade pip"
  remote+="; .venv/bin/pip install --quiet -e . 'jax[tpu]'"
else
  remote+="; cd $(printf %q "${repo_dir}")"
fi
remote+="; if [[ -f .venv/bin/activate ]]; then source .venv/bin/activate; fi"
if [[ -n "${PRELUDE:-}" ]]; then
  remote+="; ${PRELUDE}"
fi
remote+="; export DIFFUSIONLM_DISTRIBUTED=auto"
run="python3 -m $(printf %q "${module}") ${job_args}"
if [[ "${DETACH:-0}" == 1 ]]; then
  remote+="; mkdir -p logs; nohup ${run} > logs/${job}.log 2>&1 < /dev/null &"
  remote+=" echo \"\$(hostname): started, log in \$PWD/logs/${job}.log\""
else
  remote+="; ${run}"
fi

cmd=(gcloud compute tpus tpu-vm ssh "${tpu}" --zone="${zone}" --worker=all
     --command="${remote}")
if [[ -n "${PROJECT:-}" ]]; then
  cmd+=(--project="${PROJECT}")
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
