"""The similarity gate: an ensemble of open_clip scorers — at least one ViT and one CNN image tower, each with its
transformer text tower — scores image-caption pairs. Raw cosines are not comparable across models, so each
scorer's score is normalised against its own distribution of *mismatched* pairs (z = (s − μ_shuffled) /
σ_shuffled, estimated by `calibrate`), the normalised scores are combined (mean or min), and a pair passes when
the combined score reaches the user's threshold.

    gate = Gate([GateScorer("vit", ModelSpec("tiny-vit", pretrained=...)), GateScorer("cnn", ModelSpec("tiny-rn", ...))],
                combine="mean", threshold=2.0)
    report = gate.calibrate(images, captions, out_dir, target_far=0.05)   # histograms + suggested threshold
    scores = gate.score(images, captions)                                  # {"vit": .., "cnn": .., "combined": ..}
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from datamodules.atomic import atomic_open, atomic_write_text
from lightning_modules.inference import ClipScorer
from lightning_modules.model_factory import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class GateScorer:
    """One scorer. `mu`/`sigma`: statistics of its scores on shuffled (mismatched) pairs (set by calibrate or by
    config); `tower`: vit | cnn (checked: the ensemble needs both)."""

    name: str
    model: ModelSpec
    tower: Literal["vit", "cnn"] = "vit"
    mu: float | None = None
    sigma: float | None = None
    _scorer: ClipScorer | None = field(default=None, repr=False)

    def scorer(self, device: str = "cpu", batch_size: int = 128) -> ClipScorer:
        if self._scorer is None:
            self._scorer = ClipScorer(
                self.model.build().eval().to(device),
                self.model.image_transform(),
                self.model.tokenizer(),
                device=device,
                batch_size=batch_size,
            )
        return self._scorer

    def raw(self, images, captions, device: str = "cpu") -> torch.Tensor:
        sc = self.scorer(device)
        return (sc.encode_images(images) * sc.encode_texts(captions)).sum(-1)


class Gate:
    """Args:
    scorers: list of GateScorer (>= 2, at least one ViT and one CNN image tower).
    combine: mean | min of the normalised scores.
    threshold: a pair passes when combined >= threshold (in units of mismatched-pair standard deviations);
        None until calibrated.
    device: where the scorers run (auto: cuda when available).
    """

    def __init__(
        self,
        scorers: list[GateScorer],
        *,
        combine: Literal["mean", "min"] = "mean",
        threshold: float | None = None,
        device: str = "cpu",
        stats_file: str | None = None,
    ) -> None:
        if len(scorers) < 2 or {s.tower for s in scorers} != {"vit", "cnn"}:
            raise ValueError(
                "gate.scorers: need >= 2 scorers with at least one 'vit' and one 'cnn' image tower"
            )
        for s in scorers:
            arch = s.model.config["vision_cfg"]
            is_cnn = isinstance(arch.get("layers"), (list, tuple)) or "timm_model_name" in arch
            if (s.tower == "cnn") != bool(is_cnn):
                raise ValueError(
                    f"gate.scorers.{s.name}: tower={s.tower} but {s.model.name} has a "
                    f"{'CNN' if is_cnn else 'ViT'} image tower"
                )
        if combine not in ("mean", "min"):
            raise ValueError(f"gate.combine must be mean or min, got {combine!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scorers, self.combine, self.threshold, self.device = scorers, combine, threshold, device
        self.stats_file = stats_file
        if stats_file and Path(stats_file).is_file():
            self.load_stats(stats_file)

    def load_stats(self, path: str | Path) -> None:
        stats = json.loads(Path(path).read_text())
        for s in self.scorers:
            if s.name in stats:
                s.mu, s.sigma = stats[s.name]["mu"], stats[s.name]["sigma"]

    def score(self, images, captions) -> dict[str, torch.Tensor]:
        out = {}
        for s in self.scorers:
            if s.mu is None or s.sigma is None:
                raise RuntimeError(
                    f"gate scorer '{s.name}' is not calibrated: run the calibrate command first"
                )
            out[s.name] = (s.raw(images, captions, self.device) - s.mu) / s.sigma
        stacked = torch.stack([out[s.name] for s in self.scorers])
        out["combined"] = stacked.mean(0) if self.combine == "mean" else stacked.min(0).values
        return out

    def passes(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.threshold is None:
            raise ValueError("preprocess.gate.threshold: not set — calibrate the gate or give a number")
        return scores["combined"] >= self.threshold

    def calibrate(
        self, images, captions, out_dir: str | Path, *, target_far: float = 0.05, seed: int = 0
    ) -> dict:
        """Scores matched pairs and the same captions shuffled across images; sets each scorer's normalisation,
        saves `gate_stats.json`, a histogram plot and the threshold whose false-accept rate on shuffled pairs is
        `target_far` (with the matched pairs' true-accept rate at that threshold)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        n = len(captions)
        perm = list(range(n))
        random.Random(seed).shuffle(perm)
        perm = [(p + 1) % n if p == i else p for i, p in enumerate(perm)]  # no caption stays with its image
        shuffled = [captions[p] for p in perm]
        raw = {
            s.name: (s.raw(images, captions, self.device), s.raw(images, shuffled, self.device))
            for s in self.scorers
        }
        stats = {}
        for s in self.scorers:
            _, mis = raw[s.name]
            s.mu, s.sigma = float(mis.mean()), float(mis.std().clamp_min(1e-6))
            stats[s.name] = {"mu": s.mu, "sigma": s.sigma}
        norm = {
            k: ((m - stats[k]["mu"]) / stats[k]["sigma"], (x - stats[k]["mu"]) / stats[k]["sigma"])
            for k, (m, x) in raw.items()
        }
        agg = torch.mean if self.combine == "mean" else (lambda t, dim: t.min(dim).values)
        matched = agg(torch.stack([norm[s.name][0] for s in self.scorers]), 0)
        mism = agg(torch.stack([norm[s.name][1] for s in self.scorers]), 0)
        thr = float(torch.quantile(mism, 1 - target_far))
        result = {
            "stats": stats,
            "suggested_threshold": thr,
            "target_far": target_far,
            "far_at_threshold": float((mism >= thr).float().mean()),
            "tar_at_threshold": float((matched >= thr).float().mean()),
            "num_pairs": n,
        }
        atomic_write_text(out_dir / "gate_stats.json", json.dumps(stats, indent=2))
        atomic_write_text(out_dir / "calibration.json", json.dumps(result, indent=2))
        self._plot(out_dir / "gate_histogram.png", norm, matched, mism, thr)
        log.info(
            "gate calibrated: threshold %.3f gives FAR %.3f, TAR %.3f",
            thr,
            result["far_at_threshold"],
            result["tar_at_threshold"],
        )
        return result

    def _plot(self, path: Path, norm, matched, mism, thr: float) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = len(self.scorers) + 1
        fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 3.2))
        for ax, (name, (m, x)) in zip(axes, [*norm.items(), ("combined", (matched, mism))]):
            ax.hist(x.numpy(), bins=40, alpha=0.6, label="shuffled", density=True)
            ax.hist(m.numpy(), bins=40, alpha=0.6, label="matched", density=True)
            if name == "combined":
                ax.axvline(thr, color="black", linestyle="--", label=f"threshold {thr:.2f}")
            ax.set_title(name)
            ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_open(path, "wb") as f:
            fig.savefig(f, dpi=100, format="png")
        plt.close(fig)
