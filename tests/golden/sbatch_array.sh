#!/bin/bash

# Parameters
#SBATCH --account=proj
#SBATCH --array=0-9%4
#SBATCH --constraint=h100
#SBATCH --cpus-per-task=8
#SBATCH --error='/runs/odd it'"'"'s; "quoted" $HOME/logs/%A_%a_0_log.err'
#SBATCH --exclude=node7
#SBATCH --gpus-per-node=1
#SBATCH --job-name=capsfus
#SBATCH --mem=96G
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output='/runs/odd it'"'"'s; "quoted" $HOME/logs/%A_%a_0_log.out'
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --requeue
#SBATCH --signal=USR2@180
#SBATCH --time=240
#SBATCH --wckey=submitit

# setup
for d in '/runs/odd it'"'"'s; "quoted" $HOME/logs' '/runs/odd it'"'"'s; "quoted" $HOME'; do if [ -n "$(find "$d" -maxdepth 0 -perm /022)" ]; then echo "capsfus-hpc: refusing to start: $d is writable by group or others; run: chmod go-w $d" >&2; exit 3; fi; done
export CAPSFUS_SIGNAL_DELAY_S=180
export CAPSFUS_MAX_REQUEUES=3

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output '/runs/odd it'"'"'s; "quoted" $HOME/logs/%A_%a_%t_log.out' --error '/runs/odd it'"'"'s; "quoted" $HOME/logs/%A_%a_%t_log.err' /usr/bin/python3 -u -m submitit.core._submit '/runs/odd it'"'"'s; "quoted" $HOME/logs'
