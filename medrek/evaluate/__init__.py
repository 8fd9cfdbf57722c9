"""Metrics, editing protocols and the tidy results table."""

from .claims import claim_table
from .metrics import agreement, avg_score, fluency, ngram_entropy, teacher_forced
from .protocols import (Protocol, ResumeError, TruncationWarning, plan, run_protocol, summarise,
                        unedited_locality_predictions)
from .results import read_results, upsert_results

__all__ = ["Protocol", "ResumeError", "TruncationWarning", "agreement", "avg_score", "claim_table", "fluency", "ngram_entropy", "plan",
           "read_results", "run_protocol", "summarise", "teacher_forced", "unedited_locality_predictions",
           "upsert_results"]
