"""The in-process run: both parties, the dealer, the client and the owner in this process.

Its Outcome is what either runner (this one, or comet_core/roles/tcp_run.py) hands to experiments/run.py,
which writes the tables.
"""

from __future__ import annotations

from comet_core.config.typed import model_params

import logging
import weakref
from dataclasses import dataclass, field

from comet_core.roles import run_config   # run_config.check_memory: one name for validate_config and execute (tests patch it)
from comet_core.roles.run_config import engine_config, prompt_ids, reference_needs_run

log = logging.getLogger("comet.run")


@dataclass
class Outcome:
    """What a run computed (no files yet)."""
    ids: list
    tok: object
    gen: object            # private Generation
    ref: object | None     # plaintext Generation (exact mode)
    ledger: object         # pandas DataFrame of every message
    n_layers: int
    system: object = None  # the system (sparse systems keep what they revealed: sparsity.csv)
    extra_refs: list = field(default_factory=list)   # [(source, Generation)] shown beside the reference
    transport: dict | None = None   # transport=tcp: socket counters, in-process check, roles (tcp_run.py)
    work: object = None    # work counters (comm/work.py work_table; None: not counted, e.g. a tcp launcher)
    profile: object = False   # the compute profile that prices `work` (False: not looked up yet)
    op_seconds: object = None   # exact mode: measured compute per (stage, layer, op) (Ledger.op_seconds_frame)


def execute(cfg, memory_checked: bool = False) -> Outcome:
    """The private generation (and, in exact mode, the plaintext reference).

    ``memory_checked``: validate_config's check_memory passed for this cfg just before (``run``); the
    check is repeated only when the prompt's token count differs from the ``prompt_len`` it assumed (the
    same estimate is not computed twice). Other callers get the check here."""
    import torch

    from comet_core.models.generate import private_generate
    from comet_core.models.secure import SecureDecoder
    from comet_core.models.tokenizers import load_tokenizer
    from comet_core.models.weights import extract, share_weights, weight_shapes
    from comet_core.models.zoo import load_plain_model, n_layers
    from comet_core.mpc.engine import MPC
    from comet_core.progress import layer_progress
    from comet_core.systems import load_system

    torch.manual_seed(cfg.model_seed)
    cost = cfg.mode == "cost"
    tok = load_tokenizer(cfg.model.get("tokenizer", "bytes"))
    ids = prompt_ids(tok, cfg)  # a prompt too long for the model fails here, before any loading
    if not memory_checked or cfg.prompt_len is None or len(ids) != cfg.prompt_len:
        run_config.check_memory(cfg, len(ids))
    log.info("loading model %s (%s)", cfg.model.name, "shapes only" if cost else cfg.model.source)
    if cost:  # cost mode: the same protocol code on data-free shapes; no weights are loaded
        plain = None
        plain_weights = weight_shapes(cfg.model, n_layers(cfg.model))
    else:
        plain, tok = load_plain_model(cfg.model, seed=cfg.model_seed, tokenizer=tok)
        plain_weights = extract(plain, cfg.model.family, cfg.model.activation,
                                tied=bool(cfg.model.get("tie_word_embeddings", False)))

    mpc = MPC(engine_config(cfg), seed=cfg.seed, device=cfg.device, mode=cfg.mode)
    system = load_system(cfg.system)
    refs = None
    if not cost and not reference_needs_run(system):
        # the reference first: the plaintext model is then dropped before the private run (its 4 P bytes
        # are not part of the run's peak memory); the same function and inputs as after the run
        refs = plaintext_references(system, plain, plain_weights, ids, cfg.gen_tokens)
    weights = share_weights(mpc, plain_weights, groups=system.fused_layout(),   # fused groups: one buffer each
                            held=system.owner_held())
    released = None
    if refs is not None:
        released = weakref.ref(plain)
        plain = plain_weights = None
    from comet_core.memory import release_free_heap

    # the sharing's freed temporaries (and the released model) go back to the kernel; a full garbage
    # collection (0.1-0.2 s with transformers loaded) only when the model is not freed already (cycles)
    release_free_heap(collect=released is None or released() is not None)
    system.prepare(mpc, weights, model_params(cfg.model))   # e.g. Comet's predictors, shared by the model owner
    model = SecureDecoder(mpc, weights, system)
    log.info("private generation: %d prompt tokens, %d new tokens, %d layers, mode=%s",
             len(ids), cfg.gen_tokens, model.n_layers, cfg.mode)
    with layer_progress(model, passes=cfg.gen_tokens):
        gen = private_generate(mpc, model, ids, cfg.gen_tokens, int(cfg.model.vocab_size),
                               output=cfg.get("output", "token"))
    if refs is None and not cost:   # a sparse system's reference uses what the private run revealed
        refs = plaintext_references(system, plain, plain_weights, ids, cfg.gen_tokens)
    ref, extra_refs = refs if refs is not None else (None, [])
    from comet_core.comm.work import work_table

    ledger = mpc.ledger.frame()
    return Outcome(ids=ids, tok=tok, gen=gen, ref=ref, ledger=ledger, n_layers=model.n_layers,
                   system=system, extra_refs=extra_refs, work=work_table(ledger, mpc.ledger.work),
                   op_seconds=mpc.ledger.op_seconds_frame())


def plaintext_references(system, plain, plain_weights, ids: list[int], gen_tokens: int):
    """What the private tokens are compared with: (reference, [(source, generation), ...] extra rows).

    dense: the unmodified HF model. comet: the plaintext model with the private run's FFN and head masks
    (KV-cached semantics, sparse/reference.py), and beside it `plaintext_predicted`, the plaintext model
    with its own float predictors and thresholds (no mask from the private run). Any other system: the
    plaintext reference decoder with the system's own approximations (models/reference.py). Both are shown
    beside the unmodified model as `plaintext_dense` (how far sparsity or approximations move the model).
    """
    from comet_core.models.generate import plaintext_generate

    dense = plaintext_generate(plain, ids, gen_tokens)
    records = getattr(getattr(system, "state", None), "records", None)
    if records:
        from comet_core.sparse.reference import masked_generate

        masks = {(r.layer, r.step): r.real_mask for r in records if r.real_mask is not None and r.kind == "ffn"}
        heads = {(r.layer, r.step): r.real_mask for r in records if r.real_mask is not None and r.kind == "head"}
        extra = [("plaintext_dense", dense)]
        predicted = predicted_reference(system, plain, ids, gen_tokens)
        if predicted is not None:
            extra.append(("plaintext_predicted", predicted))
        return masked_generate(plain, ids, gen_tokens, masks, heads), extra
    if system.name == "dense":
        return dense, []
    from comet_core.models.reference import PlainDecoder, reference_generate

    return reference_generate(PlainDecoder(plain_weights, system), ids, gen_tokens), [("plaintext_dense", dense)]


def predicted_reference(system, plain, ids: list[int], gen_tokens: int):
    """The plaintext model with the checkpoint's float predictors and thresholds (FFN, and heads when the
    system predicts heads): masks from its own layer inputs, nothing from the private run. None when the
    system holds no float predictors (a tcp party's launcher without the in-process run)."""
    ffn = getattr(system, "plain_predictors", None)
    if not ffn:
        return None
    from comet_core.sparse.reference import FloatPredictors, predicted_generate

    heads = getattr(system, "plain_head_predictors", None) if getattr(system, "heads", False) else None
    kv = int(getattr(plain.config, "num_key_value_heads", None) or plain.config.num_attention_heads)
    return predicted_generate(plain, ids, gen_tokens, FloatPredictors(ffn, heads or None, kv,
                                                                      int(getattr(system, "block", 1))))
