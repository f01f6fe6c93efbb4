"""Trajectories built segment by segment, and the replay buffer of unfinished ones (k1.5 §2.6.2).

With partial rollouts, an iteration gives every trajectory at most a fixed budget of new tokens.
One that is still going is kept here and continued next iteration from prompt + its tokens so
far, under the newer policy. So a trajectory is a list of segments, each tagged with the
iteration i whose π_θi sampled it. A prompt's k trajectories form a group; the group enters
the loss once all k have finished, so the baseline mean r̄ always averages k finished rewards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

UNFINISHED_REASON = "budget"  # cut by the iteration's token budget; continues next iteration
FINISH_REASONS = ("stop", "max_length", "repeat", UNFINISHED_REASON)  # how a segment ends (see Trajectory)


@dataclass
class Segment:
    """Tokens one iteration's policy π_θi generated, with the engine's log-prob of each."""

    version: int  # the iteration i
    token_ids: list[int]
    logprobs: list[float] | None = None


@dataclass
class Trajectory:
    """A response in segments. ``finish_reason`` is None while it still goes on, else ``stop``
    (produced <eos>), ``repeat`` (cut where it began to loop) or ``max_length`` (hit the cap)."""

    segments: list[Segment] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def token_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.token_ids]

    @property
    def logprobs(self) -> list[float] | None:
        if any(s.logprobs is None for s in self.segments):
            return None
        return [lp for s in self.segments for lp in s.logprobs]

    @property
    def versions(self) -> list[int]:
        """The policy version of every token."""
        return [s.version for s in self.segments for _ in s.token_ids]

    def __len__(self) -> int:
        return sum(len(s.token_ids) for s in self.segments)

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` tokens, dropping or shortening segments after that."""
        kept, remaining = [], length
        for segment in self.segments:
            if remaining <= 0:
                break
            logprobs = None if segment.logprobs is None else segment.logprobs[:remaining]
            kept.append(Segment(segment.version, segment.token_ids[:remaining], logprobs))
            remaining -= len(segment.token_ids)
        self.segments = kept


@dataclass
class Group:
    """One prompt's k trajectories, with what scoring it needs."""

    prompt_ids: list[int]
    prompt: str
    answer: str
    trajectories: list[Trajectory]
    key: str | None = None  # the data module's prompt id, for its success table
    images: list[bytes] = field(default_factory=list)  # an image prompt's images, encoded
    model_inputs: dict = field(default_factory=dict)  # and as the model takes them (pixel_values)

    @property
    def finished(self) -> bool:
        return all(t.finish_reason is not None for t in self.trajectories)


class ReplayBuffer:
    """Groups with unfinished trajectories, carried from one iteration to the next.

    Kept in the checkpoint (``state_dict``), so a resumed run continues the same trajectories.
    """

    def __init__(self):
        self.groups: list[Group] = []

    def __len__(self) -> int:
        return len(self.groups)

    def take(self) -> list[Group]:
        groups, self.groups = self.groups, []
        return groups

    def put(self, groups: list[Group]) -> None:
        self.groups.extend(groups)

    @property
    def unfinished_trajectories(self) -> int:
        return sum(t.finish_reason is None for g in self.groups for t in g.trajectories)

    def state_dict(self) -> dict:
        return {"groups": [asdict(g) for g in self.groups]}  # lists, numbers, strings, bytes, tensors

    def load_state_dict(self, state: dict) -> None:
        self.groups = [
            Group(
                g["prompt_ids"],
                g["prompt"],
                g["answer"],
                [Trajectory([Segment(**s) for s in t["segments"]], t["finish_reason"]) for t in g["trajectories"]],
                g.get("key"),
                g.get("images", []),
                g.get("model_inputs", {}),
            )
            for g in state["groups"]
        ]
