"""Which models score an edit (`--scorers`, `--eval-scorers`): the default entry of each metric
role, the offline random-weight stand-ins, and the one parser of the option's text."""

from __future__ import annotations

from dataclasses import dataclass

from dmedit.core.errors import UsageError

DEFAULT_SCORERS = {"clip": "clip-vit-large-patch14", "lpips": "lpips-alex", "tracker": "efficientloftr"}
"""Role -> the `[scorers.NAME]` entry with the real weights."""
TINY_SCORERS = {"clip": "tiny-clip", "lpips": "tiny-lpips", "tracker": "tiny-tracker"}
"""Role -> the offline random-weight stand-in, for tests and smoke runs."""


@dataclass(frozen=True)
class Scorers:
    """Which model-based metrics run: `enabled` False = weight-free only; `entries` (role, registry
    entry) pairs overriding the defaults (empty = the registry's defaults); `required` False (the
    default choice) skips a metric whose model's weights are not on this machine, True refuses."""

    enabled: bool = True
    entries: tuple[tuple[str, str], ...] = ()
    required: bool = False

    def mapping(self) -> dict[str, str] | None:
        return dict(self.entries) or None

    def to_text(self) -> str:
        if not self.enabled:
            return "none"
        return ",".join(f"{role}={entry}" for role, entry in self.entries) or ("all" if self.required else "default")


def parse_scorers(*, text: str | None, flag: str = "--scorers") -> Scorers:
    """'default'/None (the registry's models, each skipped when its weights are missing), 'all'
    (the same, every one required), 'none', 'tiny' (TINY_SCORERS) or 'ROLE=ENTRY,...' (roles of
    DEFAULT_SCORERS; required) -> Scorers; UsageError for anything else."""
    value = (text or "default").strip()
    if value in ("default", ""):
        return Scorers()
    if value == "all":
        return Scorers(required=True)
    if value == "none":
        return Scorers(enabled=False)
    if value == "tiny":
        return Scorers(entries=tuple(TINY_SCORERS.items()), required=True)
    pairs = [[word.strip() for word in part.split("=", 1)] for part in value.split(",") if part.strip()]
    if not pairs or any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise UsageError(f"{flag} {text!r}: use default, all, none, tiny or ROLE=ENTRY pairs such as clip=tiny-clip")
    unknown = [role for role, _ in pairs if role not in DEFAULT_SCORERS]
    if unknown:
        raise UsageError(f"{flag}: unknown role {unknown[0]!r}; roles: {', '.join(DEFAULT_SCORERS)}")
    return Scorers(entries=tuple((role, entry) for role, entry in pairs), required=True)
