#!/usr/bin/env python3
"""Regenerates examples/data/words.txt, the quickstart's bundled input.

Synthetic prose: a fixed vocabulary of made-up words drawn with a Zipf-like
distribution, so that a few words are very frequent and most are rare, as in
real text. Deterministic (fixed seed).
"""
import random

rng = random.Random(20261123)
syllables = "ka lo mi ne su ta ri po ve da xo zu fe gi hu ja".split()
vocab = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(6000)})
rng.shuffle(vocab)
weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
lines = []
for _ in range(60000):
    words = rng.choices(vocab, weights, k=rng.randint(4, 14))
    line = " ".join(words)
    lines.append(line[0].upper() + line[1:] + rng.choice([".", ",", ";", "!", "?", ""]))
with open("examples/data/words.txt", "w") as f:
    f.write("\n".join(lines) + "\n")
