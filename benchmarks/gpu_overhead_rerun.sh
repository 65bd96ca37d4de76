RES=${OUT:-/tmp/gpu_checks}/results; mkdir -p $RES
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
OH="python3 benchmarks/overhead.py --device cuda --precision bf16-mixed --out $RES/overhead.jsonl"
timeout 45 $OH --model ViT-B-32 --batch 256 --steps 60 --warmup 15 2>&1 | tail -1
timeout 40 $OH --model ViT-B-16 --batch 128 --steps 40 --warmup 10 2>&1 | tail -1
timeout 45 $OH --model ViT-L-14 --batch 64 --steps 30 --warmup 8 2>&1 | tail -1
timeout 170 $OH --model ViT-B-32 --batch 256 --steps 50 --warmup 15 --compile 2>&1 | tail -3
