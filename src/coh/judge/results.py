"""Win / tie / loss per pair of systems, with confidence intervals, as a table and a plot.

Each outcome's share of a pair's votes gets a 95 % Wilson score interval. Why Wilson: it is
closed-form and deterministic (no resampling seed, the same table every time), and it keeps its
coverage at the small counts and the shares near 0 or 1 that human studies produce, where the
usual normal (Wald) interval shrinks to nothing; a bootstrap of independent votes would only
approximate the same binomial answer with noise. It treats votes as independent: several people
judging the same prompt agree more than strangers would, so with many voters per prompt the
intervals are somewhat too narrow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coh.judge.store import Vote
from coh.stats import wilson_interval

OUTCOMES = ("win", "tie", "loss", "neither")


@dataclass
class PairResult:
    """Votes between ``system_a`` and ``system_b`` (name order), counted from ``system_a``'s side:
    ``win`` = a judged better, ``loss`` = b judged better. ``left_chosen`` counts the decisive
    votes that went to the output shown on the left (about half, unless position biases voters)."""

    system_a: str
    system_b: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    left_chosen: int = 0
    prompts: set[str] = field(default_factory=set)
    voters: set[int] = field(default_factory=set)

    @property
    def votes(self) -> int:
        return sum(self.counts.values())

    def share(self, outcome: str) -> tuple[float, float, float]:
        """(share, low, high) of the pair's votes with this outcome."""
        k, n = self.counts[outcome], self.votes
        return (k / n if n else 0.0, *wilson_interval(k, n))

    def to_dict(self) -> dict:
        decisive = self.counts["win"] + self.counts["loss"]
        return {
            "system_a": self.system_a, "system_b": self.system_b, "votes": self.votes,
            "prompts": len(self.prompts), "voters": len(self.voters), "counts": dict(self.counts),
            "shares": {o: dict(zip(("share", "low", "high"), self.share(o))) for o in OUTCOMES},
            "left_chosen": self.left_chosen, "decisive": decisive,
        }


_OUTCOME_OF = {"a": "win", "b": "loss", "tie": "tie", "neither": "neither"}


def pair_results(votes: list[Vote]) -> list[PairResult]:
    """One result per pair of systems that has votes, in name order."""
    pairs: dict[tuple[str, str], PairResult] = {}
    for v in votes:
        c = v.comparison
        r = pairs.setdefault((c.system_a, c.system_b), PairResult(c.system_a, c.system_b))
        r.counts[_OUTCOME_OF[v.choice]] += 1
        r.left_chosen += v.choice == v.left_side
        r.prompts.add(c.prompt_id)
        r.voters.add(v.voter_id)
    return [pairs[k] for k in sorted(pairs)]


def _pct(share: tuple[float, float, float]) -> str:
    p, lo, hi = share
    return f"{100 * p:5.1f}% [{100 * lo:4.1f}, {100 * hi:5.1f}]"


def format_table(results: list[PairResult]) -> str:
    """A plain-text table: one line per pair, each outcome with its 95 % interval."""
    if not results:
        return "no votes yet"
    width = max(8, *(len(r.system_a) for r in results), *(len(r.system_b) for r in results))
    head = (f"{'A':<{width}}  {'B':<{width}}  {'votes':>5}  {'A better':<22}  {'tie':<22}  {'B better':<22}  "
            f"{'neither':<22}  left")
    lines = [head, "-" * len(head)]
    for r in results:
        left = f"{r.left_chosen}/{r.counts['win'] + r.counts['loss']}"
        lines.append(f"{r.system_a:<{width}}  {r.system_b:<{width}}  {r.votes:>5}  " +
                     "  ".join(f"{_pct(r.share(o)):<22}" for o in OUTCOMES) + f"  {left}")
    lines.append("Shares of all votes with 95% Wilson intervals; 'left': decisive votes for the output shown "
                 "on the left.")
    return "\n".join(lines)


_COLOURS = {"win": "#2b8a3e", "tie": "#adb5bd", "neither": "#e9ecef", "loss": "#c92a2a"}


def plot(results: list[PairResult], path: str | Path | None = None) -> bytes:
    """A horizontal stacked bar per pair (A better, tie, neither, B better) with the 95 %
    intervals of the two decisive shares; PNG bytes, also written to ``path`` when given."""
    import io

    from matplotlib.figure import Figure  # not pyplot: no global state, safe in the server's threads

    fig = Figure(figsize=(8, 0.7 * max(1, len(results)) + 1.4), dpi=100)
    ax = fig.subplots()
    labels = [f"{r.system_a} vs {r.system_b} (n={r.votes})" for r in results]
    for y, r in enumerate(results):
        left = 0.0
        for outcome in ("win", "tie", "neither", "loss"):
            share = r.share(outcome)[0]
            ax.barh(y, 100 * share, left=100 * left, color=_COLOURS[outcome], edgecolor="white",
                    label=outcome if y == 0 else None)
            left += share
        win, win_lo, win_hi = r.share("win")
        loss, loss_lo, loss_hi = r.share("loss")
        # the two intervals a little above and below the bar's middle, so they do not hide each other
        ax.errorbar([100 * win], [y - 0.12], xerr=[[100 * (win - win_lo)], [100 * (win_hi - win)]], fmt="none",
                    ecolor="#0b3d18", capsize=3)
        ax.errorbar([100 * (1 - loss)], [y + 0.12], xerr=[[100 * (loss_hi - loss)], [100 * (loss - loss_lo)]],
                    fmt="none", ecolor="#5c0f0f", capsize=3)
    ax.set_yticks(range(len(results)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of votes: A better | tie | neither | B better (95% Wilson intervals)")
    if results:
        handles, names = ax.get_legend_handles_labels()
        legend = {"win": "A better", "tie": "tie", "neither": "neither", "loss": "B better"}
        ax.legend(handles, [legend[n] for n in names], ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                  frameon=False)
    else:
        ax.text(50, 0, "no votes yet", ha="center", va="center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data
