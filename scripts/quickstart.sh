#!/usr/bin/env bash
# The main job, end to end on the simulator: set up, collect scripted-expert demonstrations of PushT
# into an episode store, inspect and render them, round-trip them through LeRobotDataset v3, and
# evaluate the expert with the parallel eval runner (success rate with a 95% interval, a video, a plot).
# Until the training issue lands, this is the data round trip; then it trains and evaluates a policy.
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
echo "== done: results in $OUT (render/episode_0.mp4, eval/eval.json, eval/rollouts.mp4, eval/summary.png)"
