#!/bin/bash
# One multi-GPU, multi-node training run without submitit: srun starts one launcher per
# node, and each starts that node's processes (one per GPU).
#
#     sbatch --nodes 2 --gpus-per-node 4 launch/sbatch_accelerate.sh --step step4 --out runs/s4x8
#     sbatch launch/sbatch_accelerate.sh --step step4 --epochs 1 --out runs/s4   # defaults below
#
# CPU mode (MNIST_DIST_CPU=1; MNIST_DIST_PROCS_PER_NODE processes per node, default 1): no
# GPUs, gloo, and torchrun as the per-node launcher, since `accelerate launch --cpu` starts
# one process per machine that never joins the others (each trains alone at world size 1).
# Override the GPU defaults below on the command line, e.g. on the local two-node cluster:
#
#     MNIST_DIST_CPU=1 sbatch --nodes 2 --gpus-per-node 0 --cpus-per-task 1 --mem 2G \
#         launch/sbatch_accelerate.sh --step step2 --epochs 1 --out runs/s2x2
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
if [ "${MNIST_DIST_CPU:-0}" = 1 ]; then
    PROCS_PER_NODE=${MNIST_DIST_PROCS_PER_NODE:-1}
else
    PROCS_PER_NODE=${SLURM_GPUS_ON_NODE:-1}
fi
NUM_PROCS=$((SLURM_JOB_NUM_NODES * PROCS_PER_NODE))
# Threads per process: the task's CPUs (the whole node's share) divided among its
# processes, at least 1. Passed as --threads, which the trainer takes before any variable,
# and exported, so that a stray OMP_NUM_THREADS from the submitting shell counts for nothing.
CPUS=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
THREADS=$((CPUS / PROCS_PER_NODE > 0 ? CPUS / PROCS_PER_NODE : 1))
export OMP_NUM_THREADS=$THREADS

ARGS=$(printf '%q ' "$@")  # keep each argument one word through the inner shell
if [ "${MNIST_DIST_CPU:-0}" = 1 ]; then
    LAUNCH="torchrun \
        --nnodes $SLURM_JOB_NUM_NODES \
        --nproc_per_node $PROCS_PER_NODE \
        --node_rank \$SLURM_NODEID \
        --master_addr $MAIN_ADDR \
        --master_port $MAIN_PORT"
    ARGS="--cpu $ARGS"
else
    # --multi_gpu only with 2+ processes: Accelerate refuses it for one.
    LAUNCH="accelerate launch \
        $([ "$NUM_PROCS" -gt 1 ] && echo --multi_gpu) \
        --num_machines $SLURM_JOB_NUM_NODES \
        --num_processes $NUM_PROCS \
        --num_cpu_threads_per_process $THREADS \
        --machine_rank \$SLURM_NODEID \
        --main_process_ip $MAIN_ADDR \
        --main_process_port $MAIN_PORT \
        --rdzv_backend static"
fi
# One srun task per node; $SLURM_NODEID is expanded on each node, hence the inner shell.
srun --kill-on-bad-exit=1 bash -c "$LAUNCH \
    -m mnist_dist.train --resume --no-progress --threads $THREADS $ARGS"
