#!/usr/bin/env bash
# Every GPU check of the project in one time-boxed run (a lent GPU machine, see README "Scale"):
# the gpu-marked tests first, then the benchmarks one after another (timings need the GPU to themselves).
# Prints one JSON line per step; all results are tarred into $OUT/gpu_results.tgz (or /tmp/gpu_checks/) at exit,
# also when the run is cut short. Two parts, each inside one 10-minute device call (both: ~12 minutes on one H100):
#   bash benchmarks/gpu_checks.sh core    # gpu tests, overhead (per-step synced and in blocks of 10), loader runs (~9.5 min)
#   bash benchmarks/gpu_checks.sh extra   # overhead profile, step cost bf16, overhead with torch.compile (~6 min)
#   bash benchmarks/gpu_checks.sh diag    # where the hard-negative data wait comes from, overhead in blocks,
#                                         # the compiled row (~9.5 min)
#   bash benchmarks/gpu_checks.sh sync    # host synchronisations per training step (SyncAudit) with and without
#                                         # hard negatives; if a copy of an earlier commit is in _old/, the
#                                         # hard-negative loader run before/after side by side (last); ops per
#                                         # step framework vs bare (~6 min)
#   bash benchmarks/gpu_checks.sh next    # START HERE next session: gpu tests, StepProfile of the hardneg and plain
#                                         # steps, overhead.py on the hardneg recipe's real batch, hardneg without
#                                         # text trimming (~7-9 min, one call)
#   bash benchmarks/gpu_checks.sh compile # training with module.compile.enabled=true beside eager: B/32 plain
#                                         # (eager, compiled, compiled + fused AdamW) and hardneg compiled (~8-9 min;
#                                         # compiling B/32 may take 1-1.5 min a run; `b32_hardneg` of run 4 = eager)
#   bash benchmarks/gpu_checks.sh         # core and extra
# A before/after for `sync`: mkdir _old && git archive <commit> | tar -x -C _old && echo <commit> > _old/COMMIT
# (untracked, so it travels to the device with the working tree; never commit it; 8345940 = before the host-sync
# fixes). The device has no open_clip/hydra/...: see DEVELOPERS.md for the wheels to carry in .whl/.
set -u
DEST=${OUT:-/tmp/gpu_checks}
RES=/tmp/gpu_checks_res/results
rm -rf /tmp/gpu_checks_res && mkdir -p "$RES" "$DEST"
trap 'tar czf "$DEST/gpu_results.tgz" -C /tmp/gpu_checks_res results' EXIT
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled HARDNEG_ROOT=/tmp/hardneg_gpu PYTHONUNBUFFERED=1
PY=${PY:-python3}
W=${WORKERS:-14}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/gpu.txt"
echo "cpus: $(nproc)" | tee -a "$RES/gpu.txt"
git log -1 --format='commit %H %s' 2>/dev/null | cut -c1-120 | tee -a "$RES/gpu.txt"

step() { local t=$1; shift; local s=$(date +%s); timeout "$t" "$@"; echo "{\"step\": \"$*\", \"rc\": $?, \"s\": $(( $(date +%s) - s ))}" | cut -c1-400; }

# the train.py outputs of the loader runs (profiler reports) beside the results
keep_logs() { for d in /tmp/hardneg_loader/*/; do cp "$d/output.log" "$RES/$(basename "$d").log" 2>/dev/null; done; }

PART=${1:-all}
OH="$PY benchmarks/overhead.py --device cuda --precision bf16-mixed --out $RES/overhead.jsonl"
LT="$PY benchmarks/loader_throughput.py --out $RES/loader_throughput.jsonl"
LW="$PY benchmarks/loader_worker.py --out $RES/loader_worker.jsonl --batch-size 256"
B32="trainer=gpu model=vit_b32 data.batch_size=256 data.num_workers=$W"
if [ "$PART" = next ]; then
# The next session's priorities in ONE call (~6-8 min of the 15 a session gets). Run 4 (2026-11-27, tenth session)
# measured the rest of the old `next` (overhead per step and in blocks, loader runs, text trimming; BENCHMARKS.md).
# Left: the gpu tests after that session's two fixes (SyncAudit callback order; the compiled graph count on CUDA) --
# the first pytest run on a fresh machine took > 170 s (cold inductor/Triton caches), hence 240 s; where the
# hard-negative step's time goes (run 4: ~300 ms per step in training vs 114 ms for the same model work in
# text_trim.py): StepProfile (torch.profiler) over 8 steps of the real hardneg and plain runs; the hard-negative run
# without text trimming (its override was wrong in run 4). `compile` has the compiled runs.
P="+callbacks.step_profile._target_=lightning_modules.step_profile.StepProfile +callbacks.step_profile.start=25 +callbacks.step_profile.steps=8"
step 240 $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rA --tb=short > "$RES/pytest_gpu.txt" 2>&1
tail -12 "$RES/pytest_gpu.txt"
step 100 $LT --name b32_hardneg_profiled --skip 10 --timeout 95 -- experiment=hardneg $B32 trainer.max_steps=36 $P +callbacks.step_profile.out=$RES/step_profile_hardneg.json
step 70 $LT --name b32_plain_profiled --skip 10 --timeout 65 -- $B32 trainer.max_steps=36 $P +callbacks.step_profile.out=$RES/step_profile_plain.json
# the default recipe's real first batch and loss terms, framework vs bare, in blocks: is the ~310 ms the step's own
# work (both sides slow) or the training loop's (both near text_trim's 114 ms)?
step 90 $OH --model ViT-B-32 --batch 256 --steps 40 --warmup 10 --block 10 --experiment hardneg
step 80 $LT --name b32_hardneg_untrimmed --timeout 75 -- experiment=hardneg $B32 trainer.max_steps=70 +model.trim_text=false
keep_logs
echo done
exit 0
fi
if [ "$PART" = compile ]; then
# torch.compile in training (inductor; the forward compiled in place, one graph for all batch shapes): the same
# runs with and without it on this machine, one after another; the first ~40 steps (compilation) are skipped
step 75 $LT --name b32_plain_eager --timeout 70 -- $B32 trainer.max_steps=130
step 170 $LT --name b32_plain_compiled --skip 40 --timeout 165 -- $B32 trainer.max_steps=130 module.compile.enabled=true
step 170 $LT --name b32_hardneg_compiled --skip 40 --timeout 165 -- experiment=hardneg $B32 trainer.max_steps=100 module.compile.enabled=true
step 110 $LT --name b32_plain_compiled_fused --skip 40 --timeout 105 -- $B32 trainer.max_steps=130 module.compile.enabled=true optimizer.fused=true
keep_logs
echo done
exit 0
fi
if [ "$PART" = sync ]; then
A="+callbacks.sync_audit._target_=lightning_modules.sync_audit.SyncAudit +callbacks.sync_audit.start=20 +callbacks.sync_audit.steps=10"
step 80 $LT --name audit_hardneg --skip 10 --timeout 75 -- experiment=hardneg $B32 trainer.max_steps=32 $A +callbacks.sync_audit.out=$RES/sync_audit_hardneg.json
step 60 $LT --name audit_plain --skip 10 --timeout 55 -- $B32 trainer.max_steps=32 $A +callbacks.sync_audit.out=$RES/sync_audit_plain.json
step 95 $LT --name b32_hardneg_after --timeout 90 -- experiment=hardneg $B32 trainer.max_steps=90
# ops dispatched per step, framework vs bare (kernel launches the framework adds; CUDA: foreach AdamW, autocast)
step 45 $OH --model ViT-B-32 --batch 256 --count-ops 10 --warmup 5
step 45 $OH --model ViT-B-32 --batch 256 --count-ops 10 --warmup 5 --hardneg 2
keep_logs
# last (it may be cut short): the same hard-negative run on an earlier commit copied to _old/ (with a COMMIT file)
# (this tree's loader_throughput.py runs _old/train.py and times it with the same StepClock)
if [ -d _old ]; then
  echo "before: $(cat _old/COMMIT 2>/dev/null)" | tee -a "$RES/gpu.txt"
  step 95 $LT --root _old --name b32_hardneg_before --timeout 90 -- experiment=hardneg $B32 trainer.max_steps=90
  keep_logs
fi
echo done
exit 0
fi
if [ "$PART" = diag ]; then
lscpu | grep -m1 'Model name' | tee -a "$RES/gpu.txt"
# the loader alone on this host: one process, then the real W-worker pinned loader (free-running, and with a
# 160 ms sleep per batch standing in for the hard-negative GPU step)
step 40 $LW --batches 2 --repeats 2 -- model=vit_b32 experiment=hardneg
step 50 $LW --batches 10 --repeats 2 --workers $W --pin -- model=vit_b32 experiment=hardneg
step 50 $LW --batches 10 --repeats 2 --workers $W --pin --consume-ms 160 -- model=vit_b32 experiment=hardneg
step 40 $LW --batches 10 --repeats 2 --workers $W --pin -- model=vit_b32
step 50 $OH --model ViT-B-32 --batch 256 --steps 80 --warmup 20 --block 10
step 45 $OH --model ViT-B-16 --batch 128 --steps 50 --warmup 10 --block 10
step 95 $LT --name b32_hardneg_prof --timeout 90 -- experiment=hardneg $B32 trainer.max_steps=90 +trainer.profiler=simple
step 75 $LT --name b32_plain --timeout 70 -- $B32 trainer.max_steps=130
keep_logs
step 150 $OH --model ViT-B-32 --batch 256 --steps 60 --warmup 15 --compile
echo done
exit 0
fi
if [ "$PART" != extra ]; then
step 120 $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -x > "$RES/pytest_gpu.txt" 2>&1
tail -4 "$RES/pytest_gpu.txt"

step 50 $OH --model ViT-B-32 --batch 256 --steps 60 --warmup 15
step 50 $OH --model ViT-B-32 --batch 256 --steps 80 --warmup 20 --block 10
step 50 $OH --model ViT-B-32 --batch 256 --steps 60 --warmup 15 --hardneg 2
step 40 $OH --model ViT-B-16 --batch 128 --steps 40 --warmup 10
step 40 $OH --model ViT-B-16 --batch 128 --steps 50 --warmup 10 --block 10
step 45 $OH --model ViT-L-14 --batch 64 --steps 30 --warmup 8

step 75 $LT --name b32_plain --timeout 70 -- $B32 trainer.max_steps=130
step 95 $LT --name b32_hardneg --timeout 90 -- experiment=hardneg $B32 trainer.max_steps=90
fi
if [ "$PART" != core ]; then
step 120 $OH --model ViT-B-32 --batch 256 --steps 30 --warmup 10 --profile "$RES/profile"
step 35 $PY benchmarks/step_cost.py --model ViT-B-32 --device cuda --batch 256 --precision bf16 --repeats 8 \
    --gen-items 200 --out "$RES/step_cost_b32_bf16.json"
step 200 $OH --model ViT-B-32 --batch 256 --steps 60 --warmup 15 --compile
fi
echo done
