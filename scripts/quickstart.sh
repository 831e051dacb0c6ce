#!/usr/bin/env bash
# The main job, end to end on the simulator (about 12 minutes on a 2-core CPU):
#  1-4. collect scripted-expert demonstrations of PushT into an episode store, inspect and render them,
#       round-trip them through LeRobotDataset v3, and evaluate the expert with the parallel eval runner;
#  5-7. collect 100 demos of embedded_push (state observations), train a rectified-flow policy for 2000
#       steps on the CPU, and evaluate it on 20 held-out seeds: success rate with its 95% interval, a video.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=egl HF_HUB_OFFLINE=1
RP=.venv/bin/robopolicy
OUT=data/quickstart
TASK=${TASK:-pusht}
N=${N:-20}
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1. collect $N expert demos of $TASK"
$RP sim collect task="$TASK" n="$N" out="$OUT/$TASK.zarr"
echo "== 2. inspect and render episode 0"
$RP data info "$OUT/$TASK.zarr"
$RP data render "$OUT/$TASK.zarr" --episode 0 --out "$OUT/render"
echo "== 3. LeRobotDataset v3 round trip"
$RP data export-lerobot "$OUT/$TASK.zarr" "$OUT/lerobot_$TASK"
$RP data import-lerobot "$OUT/lerobot_$TASK" "$OUT/${TASK}_reimported.zarr"
$RP data validate "$OUT/${TASK}_reimported.zarr"
echo "== 4. evaluate the expert on 10 held-out seeds"
$RP eval task="$TASK" agent=expert episodes=10 workers=2 out="$OUT/eval"
echo "== 5. collect 100 expert demos of embedded_push (state observations)"
$RP sim collect task=embedded_push n=100 obs_mode=state out="$OUT/embedded_push.zarr"
echo "== 6. train a rectified-flow policy (CPU preset, 2000 steps)"
$RP train task=embedded_push policy=flow_cpu task.store="$OUT/embedded_push.zarr" trainer.steps=2000 \
    trainer.num_threads=1 trainer.out_dir="$OUT/run_flow"
echo "== 7. evaluate the trained policy on 20 held-out seeds"
$RP eval checkpoint="$OUT/run_flow/last" task=embedded_push episodes=20 workers=1 out="$OUT/eval_policy"
echo "== done: results in $OUT (render/episode_0.mp4, eval/, run_flow/, eval_policy/eval.json, eval_policy/rollouts.mp4)"
