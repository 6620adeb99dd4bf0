"""What a hypothesis's confidence means in a rationale report: its share, and its distance to the others.

The deterministic reasoner's confidence is a softmax share, exp(score) over the sum for every candidate it
scored, rounded to 4 decimals. A clear winner therefore reads 1.00 and every other cause 0.00, which says
nothing about how far behind they are. Scores are weights of evidence in nats, so the difference of two
scores is the log of how many times more likely one is than the other under the scoring model: that
difference (the margin) is what the report shows beside the share.

Where a margin comes from, best first:
  1. the two scores, when both explanations state them (``score 1.63 = evidence …``) and no learned
     blending re-weighted the ranking (``Learned: …``): exact to the printed 2 decimals;
  2. the log of the ratio of the two shares, when both are large enough that rounding to 4 decimals moves
     the log by at most ~0.1 (a share of 0.0005 or more);
  3. a lower bound, when the lower share rounded to (almost) nothing: it is below 0.00005, so the margin is
     more than ln(top share / 0.00005).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .models import share_text

__all__ = ["Margin", "Score", "score_causes", "share_text"]

_SCORE = re.compile(r"score (-?\d+(?:\.\d+)?) = evidence")
ROUNDING = 0.00005     # the reasoner rounds shares to 4 decimals
PRECISE_SHARE = 0.0005  # below this, a share's log is off by more than ~0.1 nats after rounding


@dataclass(frozen=True)
class Margin:
    """How far one cause is from another, in nats (natural-log units of likelihood)."""

    nats: float
    source: str          # "scores", "shares" or "bound" (the module docstring says what each means)

    @property
    def text(self) -> str:
        """`2.0 nats (7.4×)`, or `> 9.9 nats (> 20,000×)` for a lower bound."""
        more = "> " if self.source == "bound" else ""
        return f"{more}{self.nats:.1f} nats ({more}{ratio_text(self.nats)}×)"


@dataclass(frozen=True)
class Score:
    """One ranked cause's share of all candidates, its stated score, and its margin to a neighbour:
    for the top cause the lead over the runner-up, for every other cause how far it is behind the top."""

    share: float
    score: float | None
    margin: Margin | None

    only: bool = False   # the one candidate scored: its share is exactly 1

    @property
    def share_text(self) -> str:
        return "100% (the only candidate)" if self.only else share_text(self.share)


def score_causes(causes: Sequence[dict[str, Any]]) -> list[Score]:
    """A `Score` per cause of a `causes.ranked` record's `root_causes`, in the same order."""
    if not causes:
        return []
    shares = [float(c.get("confidence") or 0.0) for c in causes]
    scores = [_stated_score(c) for c in causes]
    behind = [None] + [_margin(shares[0], shares[i], scores[0], scores[i]) for i in range(1, len(causes))]
    lead = behind[1] if len(causes) > 1 else None
    only = len(causes) == 1 and shares[0] >= 1
    return [Score(share=shares[0], score=scores[0], margin=lead, only=only)] + [
        Score(share=shares[i], score=scores[i], margin=behind[i]) for i in range(1, len(causes))]


def ratio_text(nats: float) -> str:
    """e^nats, readable: 7.4, 1,097, 2.7e+43."""
    if nats > 700:  # beyond a float
        return "1e+300"
    ratio = math.exp(nats)
    if ratio < 10:
        return f"{ratio:.1f}"
    if ratio < 1e6:
        return f"{ratio:,.0f}"
    return f"{ratio:.1e}"


def _stated_score(cause: dict[str, Any]) -> float | None:
    explanation = str(cause.get("explanation") or "")
    if "Learned:" in explanation:  # blended with a learned model: the stated score is not what was ranked
        return None
    found = _SCORE.search(explanation)
    return float(found.group(1)) if found else None


def _margin(top: float, other: float, top_score: float | None, other_score: float | None) -> Margin | None:
    if top_score is not None and other_score is not None:
        return Margin(max(0.0, top_score - other_score), "scores")
    if top > 0 and other >= PRECISE_SHARE:
        return Margin(max(0.0, math.log(top / other)), "shares")
    if top > 0 and other < PRECISE_SHARE:
        return Margin(math.log(top / max(other + ROUNDING, ROUNDING)), "bound")
    return None
