"""The retrieval policy: from a memory's top candidates to the edit that fires, or none, and why.

:class:`~medrek.memory.EditMemory` stores edits and finds each query's top ``k`` keys by score;
this module decides what fires. The score of a key is ``q . key / sqrt(d)`` (``score="dot"``,
the paper's) or the cosine (``score="cosine"``). With ``verify_k`` > 0 the verifier reads the
question with each of the top ``verify_k`` stored prompts and the candidate it finds most likely
to ask the same thing is taken. That candidate fires only if every gate the configuration sets
passes; each gate is one small object (:class:`Gate`) that says whether it passed, with which
numbers and, in words, why not, so a new gate is one class and one line of :func:`gates_for`.
With ``exact_match`` a question equal to a stored prompt (case and spacing folded) fires that
edit whatever the scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

if TYPE_CHECKING:
    from .memory import MemoryConfig

__all__ = ["Retrieval", "Lookup", "Explanation", "Gate", "PrototypeGate", "VerifierGate", "SimilarityGate",
           "MarginGate", "gates_for", "RetrievalPolicy", "Verify", "unit_rows"]

Verify = Callable[[Sequence[str], Sequence[str]], torch.Tensor]  # (questions, stored prompts) -> P(same) [B]


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` [N, d] scaled to unit length (zero rows stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class Retrieval:
    """Top-1 retrieval for a batch of queries; ``rows[i] == -1`` when nothing fires."""

    rows: torch.Tensor  # [B] long, row of the retrieved edit or -1
    top_rows: torch.Tensor  # [B] long, top-1 row whether or not it fired (-1 if memory empty)
    scores: torch.Tensor  # [B] top-1 score (-inf if memory empty)
    runner_up: torch.Tensor  # [B] second score (-inf if fewer than 2 edits)
    prototype_scores: torch.Tensor  # [B]
    exact: torch.Tensor | None = None  # [B] bool, the question equals the top-1 edit's prompt (exact_match)
    verified: torch.Tensor | None = None  # [B] the verifier's probability for the top-1 (NaN: not verified)
    # (EditMemory always sets both; None only in Retrievals built by hand)

    @property
    def fired(self) -> torch.Tensor:
        return self.rows >= 0


@dataclass
class Lookup:
    """Retrieval plus what the LM consumes, taken from one consistent state of the memory."""

    retrieval: Retrieval
    prompts: torch.Tensor  # [B, T, H], zeros where nothing fired
    fired: torch.Tensor  # [B] bool
    ids: list[str | None]  # the edit that fired, else None
    requests: list[dict[str, Any] | None]  # its request, else None


@dataclass
class Explanation:
    """Why an edit fired or did not, for one query."""

    fired: bool
    edit_id: str | None
    top_edit_id: str | None
    score: float
    prototype_score: float
    runner_up_score: float
    min_similarity: float | None
    request: dict[str, Any] | None
    min_margin: float | None = None
    exact_match: bool = False  # fired because the question equals the edit's prompt (folded)
    score_kind: str = "dot"  # how score, prototype_score and runner_up_score were computed
    verified: float = math.nan  # the verifier's probability that the question asks the top-1's prompt
    reason: str = ""  # in words: why it fired, or which condition stopped it
    blocked_by: tuple[str, ...] = ()  # the gates the top-1 failed, with numbers, e.g. "min_margin (1.23 < 2.05)"


# ---- gates ---------------------------------------------------------------------------------------
class Gate:
    """One condition the chosen candidate must pass to fire. ``passed`` takes the top-1 scores,
    the prototype's scores and the verifier's probabilities [B]; ``numbers`` and ``words`` say,
    for one query, why it failed."""

    name = ""

    def passed(self, score: torch.Tensor, proto: torch.Tensor, verified: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def numbers(self, score: float, proto: float, verified: float) -> str:
        raise NotImplementedError

    def words(self, score: float, proto: float, verified: float) -> str:
        raise NotImplementedError


class PrototypeGate(Gate):
    """The paper's gate: the top-1 must beat the prototype key's score."""

    name = "prototype"

    def passed(self, score, proto, verified):
        return score > proto

    def numbers(self, score, proto, verified):
        return f"score {score:.4f} <= prototype {proto:.4f}"

    def words(self, score, proto, verified):
        return f"score {score:.4f} does not beat the prototype's {proto:.4f}"


@dataclass(frozen=True)
class VerifierGate(Gate):
    """The verifier's probability that the question asks the candidate's prompt."""

    min_verified: float
    verify_k: int
    name = "min_verified"

    def passed(self, score, proto, verified):
        return verified >= self.min_verified

    def numbers(self, score, proto, verified):
        return f"{verified:.3f} < {self.min_verified:.3f}"

    def words(self, score, proto, verified):
        return (f"verifier's probability {verified:.3f} (the best of the top {self.verify_k}) is below min_verified "
                f"{self.min_verified:.3f}")


@dataclass(frozen=True)
class SimilarityGate(Gate):
    """A minimum top-1 score."""

    min_similarity: float
    name = "min_similarity"

    def passed(self, score, proto, verified):
        return score >= self.min_similarity

    def numbers(self, score, proto, verified):
        return f"{score:.4f} < {self.min_similarity:.4g}"

    def words(self, score, proto, verified):
        return f"score {score:.4f} is below min_similarity {self.min_similarity:.4g}"


@dataclass(frozen=True)
class MarginGate(Gate):
    """A minimum lead of the top-1 over the prototype's score."""

    min_margin: float
    name = "min_margin"

    def passed(self, score, proto, verified):
        return score - proto >= self.min_margin

    def numbers(self, score, proto, verified):
        return f"lead over the prototype {score - proto:.4f} < {self.min_margin:.4g}"

    def words(self, score, proto, verified):
        return f"margin over the prototype {score - proto:.4f} is below min_margin {self.min_margin:.4g}"


def gates_for(config: MemoryConfig) -> list[Gate]:
    """The gates ``config`` sets, in the order explanations name them."""
    gates: list[Gate] = []
    if config.prototype_gate:
        gates.append(PrototypeGate())
    if config.verify_k > 0:
        gates.append(VerifierGate(config.min_verified, config.verify_k))
    if config.min_similarity is not None:
        gates.append(SimilarityGate(config.min_similarity))
    if config.min_margin is not None:
        gates.append(MarginGate(config.min_margin))
    return gates


# ---- the policy ----------------------------------------------------------------------------------
class RetrievalPolicy:
    """What fires for a memory's queries, under its (live) ``config`` and ``verify`` function."""

    def __init__(self, config: MemoryConfig, verify: Verify | None = None) -> None:
        self.config = config
        self.verify = verify

    @property
    def scale(self) -> float:
        return 1.0 if self.config.score == "cosine" else 1.0 / math.sqrt(self.config.key_dim)

    def query_rows(self, queries: torch.Tensor) -> torch.Tensor:
        """Queries [B, d] as the index multiplies them (unit rows for the cosine score)."""
        q = queries.detach().float().cpu()
        return unit_rows(q) if self.config.score == "cosine" else q

    def prototype_scores(self, q: torch.Tensor, prototype_key: torch.Tensor) -> torch.Tensor:
        """The prototype key's score [B] for query rows ``q`` [B, d]."""
        if self.config.score == "cosine":
            prototype_key = unit_rows(prototype_key[None])[0]
        return (q @ prototype_key) * self.scale

    def candidates(self, stored: int) -> int:
        """How many top keys to fetch per query (at least 2: the runner-up is reported)."""
        return min(max(2, self.config.verify_k), stored)

    @staticmethod
    def nothing(proto: torch.Tensor) -> Retrieval:
        """The retrieval of an empty memory: nothing fires."""
        b = proto.shape[0]
        none, ninf = torch.full((b,), -1, dtype=torch.long), torch.full((b,), -math.inf)
        return Retrieval(none, none.clone(), ninf, ninf.clone(), proto, torch.zeros(b, dtype=torch.bool),
                         torch.full((b,), math.nan))

    def decide(self, q: torch.Tensor, proto: torch.Tensor, sims: torch.Tensor, rows: torch.Tensor,
               texts: Sequence[str] | None, prompt_of: Callable[[int], str], exact_rows: torch.Tensor,
               keys: torch.Tensor) -> Retrieval:
        """The retrieval of query rows ``q`` [B, d] from their top candidates: raw scores ``sims``
        and rows ``rows`` [B, k] (-1 where fewer were found), the prototype's scores ``proto``
        [B], the prompt of a stored row (``prompt_of``, for the verifier), the row each text
        equals (``exact_rows`` [B], -1: none) and the keys as searched (``keys`` [N, d])."""
        b, k = rows.shape
        if self.config.verify_k > 0 and (self.verify is None or texts is None):
            raise ValueError("this memory verifies its top candidates (verify_k > 0): it needs the editor's verifier "
                             "and the query texts (use Editor.retrieve / lookup, or pass texts and set memory.verify)")
        sims = sims * self.scale
        pick = torch.zeros(b, dtype=torch.long)
        verified = torch.full((b,), math.nan)
        if self.config.verify_k > 0:
            kv = min(self.config.verify_k, k)
            cand = rows[:, :kv]  # [B, kv]
            probs = self.verify([t for t in texts for _ in range(kv)],
                                [prompt_of(int(j)) if j >= 0 else "" for j in cand.flatten()])
            probs = probs.reshape(b, kv).masked_fill(cand < 0, -1.0)
            verified, pick = probs.max(1)
        top = sims.gather(1, pick[:, None])[:, 0].clone()
        top_rows = rows.gather(1, pick[:, None])[:, 0].clone()
        runner = sims[:, 1] if k > 1 else torch.full((b,), -math.inf)
        fire = top_rows >= 0
        for gate in gates_for(self.config):
            fire &= gate.passed(top, proto, verified)
        exact = exact_rows >= 0
        if bool(exact.any()):  # the asked question is a stored prompt: that edit, whatever the scores
            top[exact] = (q[exact] * keys[exact_rows[exact]]).sum(-1) * self.scale
            top_rows[exact] = exact_rows[exact]
            verified = verified.masked_fill(exact, math.nan)  # not the verifier's pick: not verified
            fire |= exact
        return Retrieval(torch.where(fire, top_rows, -1), top_rows, top, runner, proto, exact, verified)

    # ---- explanations ----------------------------------------------------------------------
    def failed_gates(self, r: Retrieval) -> list[tuple[Gate, float, float, float]]:
        """The gates the single query of ``r``'s top-1 failed, with its numbers."""
        score, proto, verified = float(r.scores[0]), float(r.prototype_scores[0]), float(r.verified[0])
        return [(gate, score, proto, verified) for gate in gates_for(self.config)
                if not bool(gate.passed(r.scores, r.prototype_scores, r.verified)[0])]

    def blocked_by(self, r: Retrieval) -> tuple[str, ...]:
        """The gates the single query of ``r``'s top-1 failed, each with its numbers."""
        return tuple(f"{gate.name} ({gate.numbers(*numbers)})" for gate, *numbers in self.failed_gates(r))

    def reason(self, r: Retrieval, ids: Sequence[str]) -> str:
        """Why the single query of ``r`` fired, or which gates stopped it, in words (``ids``: the
        memory's edit ids by row)."""
        row, top = int(r.rows[0]), int(r.top_rows[0])
        score, proto, verified = float(r.scores[0]), float(r.prototype_scores[0]), float(r.verified[0])
        if top < 0:
            return "nothing fired: the memory is empty"
        name = f"edit {ids[top]!r}"
        if bool(r.exact[0]):
            return f"{name} fired: the question equals its prompt (case and spacing folded)"
        if row >= 0:
            extra = f", verifier {verified:.3f}" if self.config.verify_k > 0 else ""
            return (f"{name} fired: {self.config.score} score {score:.4f}, prototype {proto:.4f}{extra}, "
                    "every gate passed")
        return f"nothing fired: the top-1 is {name}, but its " + "; and its ".join(
            gate.words(*numbers) for gate, *numbers in self.failed_gates(r))

    def explain(self, r: Retrieval, ids: Sequence[str], requests: Sequence[dict[str, Any]]) -> Explanation:
        """The :class:`Explanation` of the single query of ``r`` (``ids``, ``requests``: the memory's, by row)."""
        row, top = int(r.rows[0]), int(r.top_rows[0])
        return Explanation(
            fired=row >= 0,
            edit_id=ids[row] if row >= 0 else None,
            top_edit_id=ids[top] if top >= 0 else None,
            score=float(r.scores[0]),
            prototype_score=float(r.prototype_scores[0]),
            runner_up_score=float(r.runner_up[0]),
            min_similarity=self.config.min_similarity,
            request=requests[row] if row >= 0 else None,
            min_margin=self.config.min_margin,
            exact_match=bool(r.exact[0]),
            score_kind=self.config.score,
            verified=float(r.verified[0]),
            reason=self.reason(r, ids),
            blocked_by=self.blocked_by(r) if row < 0 and top >= 0 and not bool(r.exact[0]) else (),
        )
