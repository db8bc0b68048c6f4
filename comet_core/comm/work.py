"""Work counters beside the ledger: how much local computation each operator did, by kind.

The ledger says what went on the wire; these counters say what the parties (and the dealer) computed
between messages, so that cost mode can price compute as well as communication
(comet_core/results/compute_model.py: seconds = sum over kinds of count x the kind's unit cost from a
`comet calibrate` profile).

Two sources, both the same in exact and cost mode (tests/test_baselines_run.py, tests/test_comet.py):
  * explicit counts: a protocol step calls `ledger.work.add(kind, amount)` (a Beaver matmul's
    multiply-accumulates, a shuffle's permuted elements, an ideal functionality's float elements, FSS
    DCF evaluations); every count is keyed by the ledger's current (stage, layer, op) labels;
  * counts read off the ledger's own rows (`ledger_kinds`): online rounds, 64-bit words opened,
    packed bit fields opened (comparison circuits), dealer correction words. They need no hook: the
    local work of masking, unmasking and combining shares grows with what is opened.
Counts are for the in-process simulation: both parties and the dealer, as exact mode's compute_s measures.

A new protocol registers its kind with `register_kind` (and, to price it, a microbenchmark with
experiments/calibrate.register_benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

WORK_COLUMNS = ["stage", "layer", "op", "kind", "amount"]
LARGE = 1 << 15   # elements per message from which a word counts as large (256 KiB per share)
MATMUL_BLOCK = 1 << 18   # mpc/blocked.BLOCK_ELEMENTS: a Beaver matmul's weight above it takes the blocked steps


@dataclass(frozen=True)
class Kind:
    name: str
    unit: str          # what one count is
    doc: str           # where it is counted


KINDS: dict[str, Kind] = {}


def register_kind(name: str, unit: str, doc: str) -> Kind:
    """Declare a work kind (idempotent for the same definition). Counts of unknown kinds are refused."""
    k = Kind(name, unit, doc)
    old = KINDS.get(name)
    if old is not None and old != k:
        raise ValueError(f"work kind {name!r} is already registered as {old}")
    KINDS[name] = k
    return k


# -- kinds read off the ledger rows --------------------------------------------------------------------
register_kind("round", "online round", "each online round of a protocol that ran (cost_source=measured): "
              "the fixed local cost of one protocol step (dispatch, message assembly)")
register_kind("open_word", "64-bit word opened", "elements of 64 bits on the wire online (both directions, "
              "measured rows) in messages of fewer than LARGE elements: forming x - a, adding the peer's "
              "share, the local products that follow")
register_kind("open_word_large", "64-bit word opened", "the same in messages of at least LARGE elements (their "
              "buffers leave the caches and come fresh from the kernel: several times the cost per word)")
register_kind("bit_word", "64-bit word of packed bit fields", "online fields of fewer than 64 bits, in words "
              "(comparison circuits' AND gates, bit decompositions)")
register_kind("dealer_word", "64-bit word dealt", "offline rows in words, messages of fewer than LARGE "
              "elements: the dealer's correction words (its PRG expansion of both parties' seeds and the "
              "correlation it forms)")
register_kind("dealer_word_large", "64-bit word dealt", "the same in messages of at least LARGE elements")
register_kind("matmul_word", "64-bit word of a Beaver matmul", "ledger rows of protocol matmul, online and offline: "
              "its openings e = x - a and f = y - b (none on a reused mask), its truncation, its dealt c; with "
              "the dealer's drawing of b, whose seeds the ledger does not book), in messages of more than "
              "MATMUL_BLOCK elements (a weight's f, drawn and opened block by block with the products)")
register_kind("matmul_word_small", "64-bit word of a Beaver matmul", "the same in messages of at most MATMUL_BLOCK "
              "elements (activations' e, truncations, the whole-matrix steps' small weights)")
# -- explicit kinds ------------------------------------------------------------------------------------
register_kind("matmul_mac", "multiply-accumulate", "arith.matmul of more than dealer.FEW_ROWS rows: "
              "m*k*n per product (the dealer's a@b and both parties' two products; the product's words are "
              "matmul_word)")
register_kind("matmul_mac_few", "multiply-accumulate", "arith.matmul of at most dealer.FEW_ROWS rows (a "
              "decode step's weight products, memory-bound)")
register_kind("matmul_mac_few_small", "multiply-accumulate", "the same of a y of at most blocked.BLOCK_ELEMENTS "
              "elements (a small model's decode products: matmul.beaver_strategy's whole-matrix steps, "
              "several times the blocked kernel's cost per multiply-accumulate)")
register_kind("matmul_mac_bmm_few", "multiply-accumulate", "arith.matmul of two batched operands (a "
              "product per head) with at most dealer.FEW_ROWS rows per matrix (a decode step's attention scores "
              "and context over the KV cache): their kernels run row by row, several times a large product's "
              "cost per multiply-accumulate")
register_kind("matmul_call", "Beaver matmul", "each arith.matmul call: its fixed local work beyond its round "
              "(the dealer's triple of three tensors, the shape and range checks, the kernel choice, the two "
              "parties' product set-up and the truncation's), which makes a small product several times a "
              "multiply's cost")
register_kind("kept_mask_word", "weight element", "arith.matmul: the first product of a weight whose mask is kept "
              "(reuse_mask, engine.weight_masks=request|deployment; in stage deploy for the deployment's): the "
              "dealer draws its whole b, f = W - b is opened and both are stored (fresh pages), beyond the "
              "product's own words")
register_kind("select_elem", "element of a weight slice", "arith.matmul with `select` (Comet's SOMM columns, SIMM "
              "rows): the elements of the public slice of y gathered for the product (both shares and, with "
              "mask reuse, the kept mask and opening)")
register_kind("public_mac", "multiply-accumulate", "a shared matrix times a public one (arith.matmul_public, "
              "pairmax's indicator sums): m*k*n, both shares")
register_kind("public_mac_few", "multiply-accumulate", "the same with at most dealer.FEW_ROWS rows per share "
              "(a decode step's all-pairs maximum over the vocabulary: one pass over the public matrix, "
              "memory-bound)")
register_kind("shuffle_elem", "element permuted", "shuffle.permute: elements of the permuted share")
register_kind("float_elem", "element", "an ideal functionality's float64 evaluation (mpc/ideal.py)")
register_kind("dcf_elem", "comparison", "FSS comparisons (mpc/fss.py): one DCF key evaluated per element "
              "by both parties (AES-MMO per level)")


class Work:
    """Explicit work counts of one ledger, keyed by its labels at the time of the count."""

    __slots__ = ("ledger", "counts")

    def __init__(self, ledger) -> None:
        self.ledger = ledger
        self.counts: dict[tuple, float] = {}

    def add(self, kind: str, amount) -> None:
        if kind not in KINDS:
            raise KeyError(f"unknown work kind {kind!r}; register it with comet_core.comm.work.register_kind")
        lab = self.ledger._labels
        key = (lab["stage"], lab["layer"], lab["op"], kind)
        self.counts[key] = self.counts.get(key, 0) + amount

    def frame(self) -> pd.DataFrame:
        rows = [(*k, v) for k, v in self.counts.items()]
        return pd.DataFrame(rows, columns=WORK_COLUMNS)


def ledger_kinds(ledger_df: pd.DataFrame) -> pd.DataFrame:
    """Work read off ledger rows per (stage, layer, op): rounds, 64-bit words and packed words opened online
    (measured rows only: a modelled row's traffic is an ideal functionality's, with no local steps here),
    the dealer's words offline."""
    keys = ["stage", "layer", "op"]
    if ledger_df.empty:
        return pd.DataFrame(columns=WORK_COLUMNS)
    measured = ledger_df.cost_source == "measured" if "cost_source" in ledger_df else True
    on = ledger_df[(ledger_df.phase == "online") & measured]
    rounds = on.groupby(keys)["round"].nunique().rename("round")
    # a Beaver matmul's words (its openings e, f and truncation online, its dealt c offline) are priced apart
    # from other protocols' words, as matmul_word: its blocked decode steps draw the weight's mask and open f
    # in cache-sized pieces, fused with the products; a reused mask opens only e (no f in the ledger)
    # (matmul_word_small: messages of at most MATMUL_BLOCK elements, the whole-matrix steps' weights)
    mm_rows = ledger_df[(ledger_df.protocol == "matmul") & measured & ledger_df.phase.isin(["online", "offline"])]
    mm_all = (mm_rows.elements * mm_rows.bits) / 64.0
    mm_big = mm_rows.elements > MATMUL_BLOCK
    mm_words = [mm_all[sel].groupby([mm_rows[k][sel] for k in keys]).sum().rename(name)
                for sel, name in ((mm_big, "matmul_word"), (~mm_big, "matmul_word_small"))]
    on = on[on.protocol != "matmul"]
    words = (on.elements * on.bits) / 64.0
    large = on.elements >= LARGE

    def by_op(sel, df, name):
        return (words if df is on else off_words)[sel].groupby([df[k][sel] for k in keys]).sum().rename(name)

    # DCF keys (rows of more than 64 bits per element, mpc/dealer.py fss_keys): their generation is priced
    # with their evaluation, as dcf_elem, not at a dealt triple word's rate
    off = ledger_df[(ledger_df.phase == "offline") & (ledger_df.protocol != "matmul") & (ledger_df.bits <= 64)]
    off_words = (off.elements * off.bits) / 64.0
    off_large = off.elements >= LARGE
    parts = [
        rounds,
        by_op((on.bits == 64) & ~large, on, "open_word"),
        by_op((on.bits == 64) & large, on, "open_word_large"),
        by_op(on.bits < 64, on, "bit_word"),
        by_op(~off_large, off, "dealer_word"),
        by_op(off_large, off, "dealer_word_large"),
        *mm_words,
    ]
    frames = [p.reset_index().rename(columns={p.name: "amount"}).assign(kind=p.name) for p in parts if len(p)]
    if not frames:
        return pd.DataFrame(columns=WORK_COLUMNS)
    out = pd.concat(frames, ignore_index=True)[WORK_COLUMNS]
    return out[out.amount > 0]


def work_table(ledger_df: pd.DataFrame, work) -> pd.DataFrame:
    """All work of a run, one row per (stage, layer, op, kind): the explicit counts and the ledger's."""
    explicit = work.frame() if isinstance(work, Work) else work
    parts = [f for f in (explicit, ledger_kinds(ledger_df)) if len(f)]
    if not parts:
        return pd.DataFrame(columns=WORK_COLUMNS)
    df = pd.concat(parts, ignore_index=True)
    df = df.groupby(["stage", "layer", "op", "kind"], as_index=False, sort=True)["amount"].sum()
    return df.astype({"layer": "int64", "amount": "float64"})
