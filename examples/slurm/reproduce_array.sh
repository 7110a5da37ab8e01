#!/usr/bin/env bash
# A paper table on several machines: every task of a SLURM job array runs the same `sre2l reproduce` on one
# shared run folder. The kit claims each stage job before running it (a file with a lease the running task
# renews), so each job runs once; a task whose remaining jobs are held by others waits for them, and takes a
# job over when its holder dies (its lease runs out after 5 minutes). Rerunning the array resumes the table.
#
#   sbatch --array=0-7 examples/slurm/reproduce_array.sh sre2l_main /shared/runs /shared/imagenet
#
# Without SLURM it is an ordinary script: start it several times on one machine (or on several machines that
# share the run folder) and the copies split the table the same way:
#
#   bash examples/slurm/reproduce_array.sh demo runs/shared & bash examples/slurm/reproduce_array.sh demo runs/shared
#
# Arguments after the third (give "" as DATA_ROOT to keep the table's own) go to `sre2l reproduce` as they are,
# e.g. `--set validate.epochs=10 --report-every 600`.
#
# The file systems must support O_EXCL file creation (local disks, NFS v3+, Lustre, GPFS do) and the
# machines' clocks must agree to well within the lease (NTP does).
#SBATCH --job-name=sre2l-table
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=120G
#SBATCH --time=2-00:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
TABLE=${1:?usage: reproduce_array.sh TABLE RUN_DIR [DATA_ROOT]}
RUN_DIR=${2:?usage: reproduce_array.sh TABLE RUN_DIR [DATA_ROOT]}
DATA_ROOT=${3:-}
shift $(( $# < 3 ? $# : 3 ))
SETS=()
if [ -n "$DATA_ROOT" ]; then SETS=(--set "data.root=$DATA_ROOT"); fi
echo "task ${SLURM_ARRAY_TASK_ID:-local} on $(hostname): sre2l reproduce $TABLE --run-dir $RUN_DIR ${SETS[*]:-}"
# one task = one GPU (SLURM sets CUDA_VISIBLE_DEVICES); the tables and figures go beside the runs
exec sre2l reproduce "$TABLE" --run-dir "$RUN_DIR" --out "$RUN_DIR/tables" "${SETS[@]}" "$@"
