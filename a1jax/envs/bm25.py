"""Okapi BM25 over a fixed list of documents (Robertson et al., with the Lucene idf that stays positive):

    score(q, d) = sum_t idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

Ties break by document order, so rankings are deterministic.
"""
from __future__ import annotations

import collections
import math
import re

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BM25:
    def __init__(self, docs: list[str], *, k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.lengths = [len(tokenize(d)) for d in docs]
        self.avgdl = sum(self.lengths) / max(len(docs), 1)
        self.postings: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)  # term -> [(doc, tf)]
        for i, d in enumerate(docs):
            for term, tf in collections.Counter(tokenize(d)).items():
                self.postings[term].append((i, tf))
        n = len(docs)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}

    def scores(self, query: str) -> dict[int, float]:
        out: dict[int, float] = collections.defaultdict(float)
        for term in set(tokenize(query)):
            idf = self.idf.get(term, 0.0)
            for doc, tf in self.postings.get(term, ()):
                norm = self.k1 * (1 - self.b + self.b * self.lengths[doc] / self.avgdl)
                out[doc] += idf * tf * (self.k1 + 1) / (tf + norm)
        return out

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """The k best (doc index, score) pairs with a positive score, best first."""
        return sorted(self.scores(query).items(), key=lambda kv: (-kv[1], kv[0]))[:k]
