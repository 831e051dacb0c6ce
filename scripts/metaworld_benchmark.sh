#!/usr/bin/env bash
# Meta-World from state: collect expert demos, train a head, evaluate on held-out layouts, for several tasks.
#   bash scripts/metaworld_benchmark.sh                    # 5 tasks, diffusion_cpu, 3000 steps, seed 0
#   TASKS="reach door-open" POLICY=flow_cpu STEPS=5000 SEED=1 bash scripts/metaworld_benchmark.sh
# The checkpoint carries its env_kwargs (task_sampling: seeded), so evaluation seeds are unseen layouts.
# Writes runs/metaworld/<task>_<policy>_s<seed>/ and results/metaworld/<task>_<policy>_s<seed>/eval.json,
# and prints one summary line per task. Budget on a 2-core CPU: ~4 training steps/s per task at batch 64.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-"reach button-press drawer-open door-open pick-place"}
POLICY=${POLICY:-diffusion_cpu}
STEPS=${STEPS:-3000}
SEED=${SEED:-0}
DEMOS=${DEMOS:-50}
EPISODES=${EPISODES:-50}
export MUJOCO_GL=${MUJOCO_GL:-egl}
RP=".venv/bin/robopolicy"
for name in $TASKS; do
  store="data/metaworld/${name}.zarr"
  run="runs/metaworld/${name}_${POLICY}_s${SEED}"
  out="results/metaworld/${name}_${POLICY}_s${SEED}"
  if [ ! -d "$store" ]; then
    $RP sim collect task="metaworld_${name}" n="$DEMOS" obs_mode=state out="$store" progress=false \
      "env_kwargs={task_sampling: seeded}"
  fi
  if [ ! -d "$run/last" ]; then
    $RP train task=metaworld task.env="metaworld_${name}" task.store="$store" policy="$POLICY" \
      trainer.steps="$STEPS" trainer.warmup_steps=200 trainer.lr=2e-4 trainer.val_every=1000 \
      trainer.checkpoint_every=1000 trainer.num_threads=1 trainer.seed="$SEED" trainer.progress=false \
      trainer.out_dir="$run"
  fi
  $RP eval task="metaworld_${name}" checkpoint="$run/last" episodes="$EPISODES" workers=1 videos=1 \
    progress=false out="$out" | tail -n 8
done
