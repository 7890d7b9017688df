#!/bin/bash
# Train with the course's Trainer on several nodes under SLURM: one torchrun per node, 8 GPUs each.
#   sbatch --nodes=4 scripts/slurm_train.sh --parallel fsdp --preset gpt2_small --out /shared/runs/run42
# The arguments go to `python -m llm_course train`; --out must be on a file system that every node sees.
#SBATCH --job-name=llm-course-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# The first node of the allocation hosts the c10d rendezvous.
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

srun torchrun \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv-id="$SLURM_JOB_ID" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="$HEAD_NODE:29500" \
    --max-restarts=3 \
    -m llm_course train "$@"
