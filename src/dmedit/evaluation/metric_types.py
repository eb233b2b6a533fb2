"""The one result type every edit metric returns (weight-free ones in metrics.py, model-based
ones in model_metrics.py), so `dmedit eval`, `dmedit run --eval` and `dmedit ablate` treat them
alike.

Videos handed to metrics are numpy uint8 arrays (F, H, W, 3) RGB of equal shape; masks are
bool (F, H, W) (True = the edited object).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metric:
    """One score of an edit.

    name: stable snake_case key used in JSON and tables (e.g. "text_align", "psnr_outside_mask").
    value: the score over the clip. per_frame: one value per frame or per neighbouring-frame pair
    (empty when the metric has no per-frame form). higher_is_better: the direction of a better
    edit. value_range: the range in words, e.g. "[-1, 1]", "[0, inf) dB". model: the registry
    entry or algorithm that produced it (e.g. "clip-vit-large-patch14", "opencv-lk"). extra:
    further named numbers (e.g. the raw cosine beside a rescaled score).
    """

    name: str
    value: float
    higher_is_better: bool
    value_range: str
    model: str
    per_frame: tuple[float, ...] = ()
    extra: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"value": self.value, "higher_is_better": self.higher_is_better, "range": self.value_range,
                "model": self.model, "per_frame": list(self.per_frame), **({"extra": self.extra} if self.extra else {})}
