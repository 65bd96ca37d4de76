"""Why `module.compile` + `module.grad_surgery` needs a fresh compile: a stale inductor cache entry.

Gradient surgery takes each loss group's gradient separately: `autograd.grad(loss_a, params, retain_graph=True)`,
then `autograd.grad(loss_b, params)`. Through a torch.compile'd model that needs AOTAutograd's donated buffers off
(`torch._functorch.config.donated_buffer = False`; otherwise torch raises). This script shows what happens when the
inductor FX-graph cache already holds the backward of the same graph compiled WITH donated buffers (any earlier
compiled training run of the model): tiny ViT, 8 images, 8 x 16 tokens, symbolic shapes, in a private cache folder:

    1. warm: compile with donated buffers on, one backward (fills the cache)
    2. donated off, cache on: the second gradient comes from the cached donating backward
    3. donated off, fx_graph_cache off: compiled afresh

    python benchmarks/compile_retain_graph.py            # one JSON line per variant, appended to --out

On torch 2.14.1 (2-core CPU, 2026-11-27): variant 2's second gradient is wrong (norm 41.9 vs 8.3 eager), variant 3
matches eager — the cache key does not include the donated-buffer setting. `CompileSpec.apply(retains_graph=True)`
therefore turns donated buffers and the FX-graph cache off and resets dynamo's in-memory graphs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

# a private inductor cache, so the result does not depend on what earlier runs left in the default one
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_retain_graph_")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.benchmarks.collect import append_jsonl  # noqa: E402
from lightning_modules.compilation import CompileSpec  # noqa: E402
from lightning_modules.model_factory import ModelSpec  # noqa: E402


def two_gradients(model, images, texts, mark_dynamic: bool):
    if mark_dynamic:  # as training marks a hard-negative batch
        CompileSpec(enabled=True).mark_inputs(images, texts, counts_vary=True)
    img, txt, scale = model(images, texts)
    loss_a = (img @ txt.T * scale).logsumexp(1).mean()
    loss_b = (img * img.roll(1, 0)).sum() + (txt[:4] ** 3).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    g_a = torch.autograd.grad(loss_a, params, retain_graph=True, allow_unused=True)
    g_b = torch.autograd.grad(loss_b, params, allow_unused=True)

    def flat(gs):
        return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(gs, params)])

    return flat(g_a), flat(g_b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "compile_retain_graph.jsonl"
    )
    args = ap.parse_args()
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    base = ModelSpec(name="tiny-vit").build()
    images, texts = torch.randn(8, 3, 48, 48), torch.randint(1, 400, (8, 16))
    ref_a, ref_b = two_gradients(base, images.clone(), texts.clone(), mark_dynamic=False)
    # 1. an earlier compiled run: donated buffers on (torch's default), one backward; fills the FX-graph cache
    warm = copy.deepcopy(base)
    warm.compile()
    x, t = images.clone(), texts.clone()
    CompileSpec(enabled=True).mark_inputs(x, t, counts_vary=True)
    i, tx, sc = warm(x, t)
    (i @ tx.T * sc).sum().backward()
    functorch_config.donated_buffer = False  # required for retain_graph=True through a compiled forward
    for variant, fx_cache in (
        ("donated off, fx_graph_cache on", True),
        ("donated off, fx_graph_cache off", False),
    ):
        inductor_config.fx_graph_cache = fx_cache
        torch._dynamo.reset()
        model = copy.deepcopy(base)
        model.compile()
        g_a, g_b = two_gradients(model, images.clone(), texts.clone(), mark_dynamic=True)
        row = {
            "variant": variant,
            "first_max_abs_diff": float((g_a - ref_a).abs().max()),
            "second_max_abs_diff": float((g_b - ref_b).abs().max()),
            "second_norm": round(float(g_b.norm()), 4),
            "second_norm_eager": round(float(ref_b.norm()), 4),
            "torch": torch.__version__,
        }
        row["matches_eager"] = row["first_max_abs_diff"] < 1e-3 and row["second_max_abs_diff"] < 1e-3
        print(json.dumps(row), flush=True)
        append_jsonl(args.out, row)


if __name__ == "__main__":
    main()
