#!/usr/bin/env bash
# Rebuild the committed toy leaderboard from scratch: every method at the toy suite's tuned settings
# (bench/toy/assets/tuned.json, from the committed tuning runs in results/tuning/toy/; tuning is not redone here),
# trained at 2e4, 4e4 and 8e4 NFE with seeds 0, 1 and 2 and evaluated on the 256 test images, the online methods once
# on the oracle and once on the toy-pickscore proxy, DOODL and its EDICT-only ablation at inference, and the flow toy's
# methods on its own pipeline; then the tables, figures and page (`bench leaderboard`).
#
#   results/rebuild.sh [OUT]        # OUT: where the run directories go (default results/runs); JOBS=2 workers
#
# Resumable: run it again after an interruption and every finished record is kept (`bench run --resume`). A run
# directory of OUT replaces the one of the same name under results/runs only when OUT is results/runs.
set -euo pipefail
out=${1:-results/runs}
jobs=${JOBS:-2}
grid=(--budgets 2e4nfe,4e4nfe,8e4nfe --seeds 0,1,2 --jobs "$jobs" --quiet)

run() {  # run DIR ARGS...: a new run, or the rest of an interrupted one
  local dir=$1
  shift
  if [[ -f $dir/run.json ]]; then
    bench run "$@" --run-dir "$dir" --resume
  else
    bench run "$@" --run-dir "$dir"
  fi
}

# offline, online on the oracle (the suite's primary metric, the default --reward), and the uniform-t ablation
run "$out/toy" --methods sft,dpo,kto,inpo,dspo,dpo-gamma-t,mapo,cal-dpo,sdpo=dpo,uniform-t=dpo-gamma-t,grpo,ddpo,draft,dense-reward \
  -a uniform-t.gamma=1 "${grid[@]}"
# online on a proxy: what reward hacking looks like against the ground truth
run "$out/toy-pickscore-reward" --methods grpo,ddpo,draft,dense-reward --reward toy-pickscore "${grid[@]}"
# inference-time: DOODL and the EDICT chain alone (no optimisation); training budgets do not apply, one row at 4e4
run "$out/toy-doodl" --methods doodl,edict-only=doodl -a edict-only.opt_steps=0 --budgets 4e4nfe --seeds 0,1,2 \
  --jobs "$jobs" --quiet
# the flow toy (suite toy-flow): its own tuned settings (bench/toy/assets/flow/tuned.json, from the committed tuning run
# in results/tuning/toy-flow/), the offline methods and the flow online methods on the oracle
run "$out/toy-flow" --suite toy-flow --methods dpo,kto,inpo,dpo-gamma-t,flow-grpo,diffusionnft "${grid[@]}"
# the flow online methods at 4x and 8x the default budget of 4e4 (one training per seed, recorded at both)
run "$out/toy-flow-online" --suite toy-flow --methods flow-grpo,diffusionnft --budgets 1.6e5nfe,3.2e5nfe --seeds 0,1,2 \
  --jobs "$jobs" --quiet
if [[ $out == results/runs ]]; then
  bench leaderboard
fi
