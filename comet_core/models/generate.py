"""Greedy generation: private (2PC, KV-cached) and plaintext (the HF model), token for token."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field

import torch

from comet_core.mpc.engine import MPC
from comet_core.models.secure import SecureDecoder
from comet_core.progress import progress

log = logging.getLogger(__name__)


@dataclass
class Generation:
    tokens: list[int]                                  # generated ids (without the prompt)
    logits: list[torch.Tensor] = field(default_factory=list)   # revealed last-position logits per step
    stage_seconds: dict[str, float] = field(default_factory=dict)      # wall time per stage
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process's CPU time (all threads)


def one_hot(ids: list[int], vocab: int, device) -> torch.Tensor:
    """(T, V) int64 one-hot rows (integers: the embedding product needs no truncation)."""
    if torch.device(device).type == "meta":
        return torch.empty((len(ids), vocab), dtype=torch.int64, device="meta")
    oh = torch.zeros((len(ids), vocab), dtype=torch.int64, device=device)
    oh[torch.arange(len(ids)), torch.tensor(ids)] = 1
    return oh


OUTPUTS = ("token", "logits")


def private_generate(mpc: MPC, model: SecureDecoder, prompt_ids: list[int], new_tokens: int,
                     vocab: int, output: str = "token") -> Generation:
    """Prefill the prompt, then decode: `new_tokens` forward passes in all (the first is prefill).

    The client shares each new token as a one-hot row. What it receives (`output`):
      * token (default): the servers run a secure argmax over the vocabulary and reveal only the id.
        `Generation.logits` then holds the logits read by `MPC.peek` (exact-mode simulation only: a
        debug read of both shares that is not booked and that no party of a deployment could make),
        so the logit error against plaintext can still be reported; a single party leaves it empty
        (reported as NaN).
      * logits: the whole last-position logit vector is revealed; the client takes the argmax.
    In cost mode there are no values: the next id is a placeholder 0.
    """
    from comet_core.errors import require

    require(output in OUTPUTS, f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    ids = list(prompt_ids)
    if not mpc.is_cost:
        mpc.ledger.start_op_clock()
    # the objects made so far (the loaded model, transformers' modules) leave the cyclic collector's view for
    # the generation: a full collection over them took 0.17 s of a 0.66 s tiny-llama run at a random step
    gc.freeze()
    try:
        return _generate(mpc, model, ids, new_tokens, vocab, output)
    finally:
        gc.unfreeze()


def _generate(mpc: MPC, model: SecureDecoder, ids: list[int], new_tokens: int, vocab: int, output: str) -> Generation:
    cache = model.new_cache()
    gen = Generation(tokens=[])
    gen.stage_seconds = {"deploy": 0.0, "preprocess": 0.0, "setup": 0.0, "prefill": 0.0, "decode": 0.0}
    gen.stage_cpu_seconds = dict(gen.stage_seconds)

    def timed(stage: str, work) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        with mpc.label(stage=stage):
            work()
        gen.stage_seconds[stage] += time.perf_counter() - t0
        gen.stage_cpu_seconds[stage] += time.process_time() - c0

    # once per deployment (this run is its first request): per-deployment weights (Comet's deployment
    # permutation); per-deployment weight masks are opened at each weight's first product, also booked
    # in stage deploy (mpc/weight_masks.py), their compute time inside the stage that made the product
    timed("deploy", lambda: model.system.deploy(mpc, model))
    with mpc.inference():
        timed("preprocess", lambda: model.system.preprocess(mpc, model))   # per request, before the prompt
        t0, c0 = time.perf_counter(), time.process_time()
        with mpc.label(stage="setup"):
            model.system.start_request(mpc, model, new_tokens)   # per-request work (Comet: the oblivious shuffle)
        gen.stage_seconds["setup"] = time.perf_counter() - t0
        gen.stage_cpu_seconds["setup"] = time.process_time() - c0
        for step in progress(range(new_tokens), desc="private generation", unit="tok"):
            stage = "prefill" if step == 0 else "decode"
            t0, c0 = time.perf_counter(), time.process_time()
            with mpc.label(stage=stage):
                new = ids if step == 0 else ids[-1:]
                model.system.start_step(step, len(new))
                onehot = mpc.share(one_hot(new, vocab, mpc.device), owner="client")
                logits = model.forward(onehot, cache)
                if output == "logits":
                    plain = mpc.reveal(logits)[0]
                    nxt = 0 if mpc.is_cost else int(torch.argmax(plain))
                else:
                    tok = mpc.reveal(model.next_token(logits))
                    nxt = 0 if mpc.is_cost else int(torch.round(tok.reshape(-1)[0]))
            gen.stage_seconds[stage] += time.perf_counter() - t0
            gen.stage_cpu_seconds[stage] += time.process_time() - c0
            if output == "token":  # the debug read, outside the measured time
                plain = mpc.peek(logits)
                plain = None if plain is None else plain[0]
            if plain is not None and not mpc.is_cost:
                gen.logits.append(plain.float().cpu())
            gen.tokens.append(nxt)
            ids.append(nxt)
            log.debug("step %d (%s): token %d", step, stage, nxt)
    return gen


@torch.no_grad()
def plaintext_generate(model, prompt_ids: list[int], new_tokens: int) -> Generation:
    """Greedy decoding with the plaintext HF model (full forward per step, no cache)."""
    ids = list(prompt_ids)
    gen = Generation(tokens=[])
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        logits = model(torch.tensor([ids])).logits[0, -1].double()
        nxt = int(torch.argmax(logits))
        gen.logits.append(logits.float())
        gen.tokens.append(nxt)
        ids.append(nxt)
    gen.stage_seconds = {"total": time.perf_counter() - t0}
    return gen
