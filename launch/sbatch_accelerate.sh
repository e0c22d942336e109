#!/bin/bash
# One multi-GPU, multi-node training run without submitit: srun starts one
# `accelerate launch` per node, and each starts one process per GPU.
#
#     sbatch --nodes 2 --gpus-per-node 4 launch/sbatch_accelerate.sh --step step4 --out runs/s4x8
#     sbatch launch/sbatch_accelerate.sh --step step4 --epochs 1 --out runs/s4   # defaults below
#
# Arguments go to `python -m mnist_dist.train`. Resubmitting the same command with --resume
# continues from the last completed epoch; with --requeue (below) SLURM does that itself
# after a preemption, since the script always passes --resume.
#SBATCH --job-name=mnist-dist
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=01:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

# The first node of the allocation hosts the rendezvous; port derived from the job id.
MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -1)
MAIN_PORT=$((20000 + SLURM_JOB_ID % 20000))
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-1}
NUM_PROCS=$((SLURM_JOB_NUM_NODES * GPUS_PER_NODE))
# Threads per process: the node's CPUs shared among its GPU processes.
export OMP_NUM_THREADS=$((SLURM_CPUS_PER_TASK / GPUS_PER_NODE > 0 ? SLURM_CPUS_PER_TASK / GPUS_PER_NODE : 1))

ARGS=$(printf '%q ' "$@")  # keep each argument one word through the inner shell
# One srun task per node; $SLURM_NODEID is expanded on each node, hence the inner shell.
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
    --multi_gpu \
    --num_machines $SLURM_JOB_NUM_NODES \
    --num_processes $NUM_PROCS \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_ADDR \
    --main_process_port $MAIN_PORT \
    --rdzv_backend static \
    -m mnist_dist.train --resume --no-progress $ARGS"
