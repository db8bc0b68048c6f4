"""When Comet's oblivious weight shuffle runs: `system.permutation=online|preprocessed|deployment`.

The shuffle (systems/comet.py step 1) permutes every neuron-indexed weight by sigma o pi, which no
single process knows; the servers then see each step's active set in those coordinates.
  * online (the paper's reading, the default): a fresh permutation per request, shuffled in stage
    `setup`, on the request's critical path.
  * preprocessed: the same fresh permutation per request, but the shuffle depends only on the weights,
    not on the prompt, so it runs before the request arrives (stage `preprocess`: server to server, off
    the critical path; metrics.csv reports `total` without it and `total_amortised` with it). The
    leakage is the online one.
  * deployment: one permutation per deployment, the permuted weights made once in stage `deploy`
    (amortised over `deploy_requests`). Leakage: every request's revealed masks are in the same
    permuted coordinates, so the servers can compare the active sets of different requests (their
    overlap, which units recur) although they cannot name the real neurons. A linkage experiment
    (experiments/linkage.py) measures what that buys a server: from revealed masks alone, how well it
    tells whether two requests come from the same play or share a prompt prefix (AUC, deployment vs
    online).

Merging the shuffle with the opening of the permuted weight's Beaver mask (the dealer making the
permuted mask, so that one party's share of pi(W) doubles as its mask share and only the other party
sends) is NOT done, and is not sound in this toolkit's threat model: the last step of the shuffle
relabels both shares by sigma, which the dealer does not know (that is what hides the selected rows of
reused weight masks from the online dealer: docs/threat-model.md), so the dealer cannot know P0's final
share and cannot make the triples c = a @ B for a mask B built from it; making B in pi coordinates
instead would need the parties to name their selections in pi coordinates, i.e. the real neurons, to
the dealer. The opening stays a separate one-round pass (16 bytes per element at the weight's first
product in the mask's lifetime).
"""

from __future__ import annotations

PERMUTATION_TIMINGS = ("online", "preprocessed", "deployment")
STAGE = {"online": "setup", "preprocessed": "preprocess", "deployment": "deploy"}   # where the shuffle is booked
