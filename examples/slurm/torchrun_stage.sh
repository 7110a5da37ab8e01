#!/usr/bin/env bash
# One stage on several nodes of 8 GPUs each: `srun` starts one torchrun per node, torchrun one process per
# GPU. Recover and relabel split their work units by rank (and claim each one, so a restart resumes);
# validate trains one student with DDP. Squeeze runs once beforehand (one process). Every node must see the
# run folder (a shared file system).
#
#   sbatch --nodes=4 examples/slurm/torchrun_stage.sh recover lpld_in1k /shared/runs/lpld50 /shared/imagenet recover.ipc=50
#
#SBATCH --job-name=sre2l-stage
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=2-00:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
STAGE=${1:?usage: torchrun_stage.sh STAGE PRESET RUN_DIR DATA_ROOT [KEY=VALUE ...]}
PRESET=${2:?}; RUN_DIR=${3:?}; DATA_ROOT=${4:?}; shift 4
SETS=(--set "data.root=$DATA_ROOT")
for kv in "$@"; do SETS+=(--set "$kv"); done
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes "$SLURM_NNODES" --nproc-per-node 8 --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d \
  --rdzv-endpoint "$HEAD:29500" -m sre2l.cli "$STAGE" --preset "$PRESET" --run-dir "$RUN_DIR" "${SETS[@]}"
