"""The four branches of a DreamMotion step and which U-Net call runs each.

V-DDS needs ε_w on (x_t, ∅), (x_t, y_tgt), (x̂_t, ∅) and (x̂_t, y_src); the SSM losses need the keys
of one target branch with grad and of the matching source branch without. The plan batches every
branch that needs no grad into one call and runs the SSM branch alone with grad.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmedit.core.config import EditConfig

# branch name -> (which latents, which prompt: 0 = null, 1 = source, 2 = target)
BRANCHES = {
    "target_uncond": ("x_t", 0),
    "target_cond": ("x_t", 2),
    "source_uncond": ("source_t", 0),
    "source_cond": ("source_t", 1),
}


@dataclass(frozen=True)
class BranchPlan:
    """Which branches run in which U-Net call; fixed for a run by the config."""

    no_grad: tuple[str, ...]
    grad: str | None
    source_keys: str | None


def branch_plan(*, config: EditConfig) -> BranchPlan:
    """Conditional keys: grad on (x_t, y_tgt), source keys from (x̂_t, y_src); unconditional:
    grad on (x_t, ∅), source keys from (x̂_t, ∅). No SSM term: all four branches without grad."""
    if config.lambda_spatial == 0 and config.lambda_temporal == 0:
        return BranchPlan(no_grad=tuple(BRANCHES), grad=None, source_keys=None)
    conditional = config.ssm_keys == "conditional"
    grad = "target_cond" if conditional else "target_uncond"
    return BranchPlan(no_grad=tuple(name for name in BRANCHES if name != grad), grad=grad,
                      source_keys="source_cond" if conditional else "source_uncond")
