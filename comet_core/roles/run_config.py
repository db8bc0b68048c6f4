"""The run's configuration, read and checked before any work: shared by the in-process run
(comet_core/roles/inprocess.py), the tcp run (comet_core/roles/tcp_run.py) and every `comet party` role
(comet_core/roles/party.py), below all three so that none of them imports another for its config.
"""

from __future__ import annotations

from pathlib import Path

ROLES = ("p0", "p1", "dealer", "client", "owner")


def load_prompt(cfg) -> str:
    """The client's text: ``prompt_file`` if set (read verbatim, one trailing newline dropped), else ``prompt``."""
    from comet_core.errors import ConfigError

    if cfg.get("prompt_file"):
        p = Path(cfg.prompt_file).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"prompt_file={cfg.prompt_file} cannot be read "
                              f"({getattr(e, 'strerror', None) or e}); give a readable UTF-8 text file") from None
        text = text[:-1] if text.endswith("\n") else text
        if not text.strip():
            raise ConfigError(f"prompt_file={cfg.prompt_file} is empty; put the prompt text in it")
        return text
    if not isinstance(cfg.prompt, str) or cfg.prompt.strip() == "":
        raise ConfigError("prompt must be a non-empty string (or use prompt_file=<path>)")
    return cfg.prompt


def validate_config(cfg, role: str | None = None) -> None:
    """Reject bad values before any work starts (one-line ConfigError). No file system writes.
    `role`: a `comet party` role (p0, p1, dealer, client, owner): the system checks only the files that
    role reads (e.g. only the owner needs Comet's predictor checkpoint)."""
    from comet_core.config.schema import check_run_config
    from comet_core.config.typed import model_params, network_params, system_params
    from comet_core.comm.network import Network
    from comet_core.errors import require
    from comet_core.models.zoo import check_positions, n_layers

    check_run_config(cfg)
    system_params(cfg.system)   # the family's declared keys only (comet_core/config/typed.py)
    from comet_core.mpc import matmul

    require(matmul.KERNEL in matmul.KERNELS,
            f"COMET_RING_KERNEL must be one of {', '.join(matmul.KERNELS)}, got {matmul.KERNEL!r}")
    require(matmul.USE_FEWROW in ("auto", "on", "off"),
            f"COMET_FEWROW_KERNEL must be one of auto, on, off, got {matmul.USE_FEWROW!r}")
    require(cfg.mode in ("exact", "cost"), f"mode must be exact or cost, got {cfg.mode!r}")
    require(cfg.get("output", "token") in ("token", "logits"),
            f"output must be token (secure argmax; the client learns only the next token) or logits, got {cfg.output!r}")
    require(isinstance(cfg.gen_tokens, int) and 1 <= cfg.gen_tokens <= 1024,
            f"gen_tokens must be an integer in 1..1024 (the paper: 1-16), got {cfg.gen_tokens!r}")
    require(cfg.prompt_len is None or (isinstance(cfg.prompt_len, int) and cfg.prompt_len >= 1),
            f"prompt_len must be a positive integer or null, got {cfg.prompt_len!r}")
    require(cfg.device in ("cpu", "cuda"), f"device must be cpu or cuda, got {cfg.device!r}")
    if role in (None, "client"):   # only the client holds the prompt (the other roles' configs have none)
        load_prompt(cfg)
    Network.from_cfg(network_params(cfg.network))
    engine_config(cfg)
    from comet_core.results.compute_model import check_profile_env

    check_profile_env()   # a compute profile named by $COMET_COMPUTE_PROFILE exists and is valid
    n_layers(cfg.model)
    if cfg.prompt_len is not None:
        check_positions(int(cfg.prompt_len), cfg.model, cfg.gen_tokens)
    from comet_core.systems import load_system

    system = load_system(cfg.system)
    system.party_role = role
    system.validate(cfg.mode, model_params(cfg.model), int(cfg.gen_tokens))   # a system's own keys and files, before any model is loaded
    transport = cfg.get("transport", {}).get("name", "inprocess")
    require(transport in ("inprocess", "tcp"), f"transport must be inprocess or tcp (conf/transport/), got {transport!r}")
    from comet_core.roles.emulated import check_emulation

    check_emulation(cfg)
    if transport == "tcp":
        check_party_config(cfg)
    dr = cfg.get("deploy_requests", 1000)
    require(isinstance(dr, int) and not isinstance(dr, bool) and dr >= 1,
            f"deploy_requests must be a positive integer (requests a deployment's one-off work is shared by), got {dr!r}")
    check_memory(cfg)


def check_memory(cfg, prompt_tokens: int | None = None) -> None:
    """Refuse an exact run whose estimated peak memory exceeds what the machine has (force=true runs it)."""
    from comet_core import memory
    from comet_core.errors import CometError
    from comet_core.models.zoo import n_layers

    if cfg.mode != "exact" or cfg.get("force", False):
        return
    T = (prompt_tokens or cfg.prompt_len or 128) + cfg.gen_tokens
    L = n_layers(cfg.model)
    from comet_core.mpc import matmul
    from comet_core.systems import load_system

    opts = dict(reuse_weight_masks=engine_config(cfg).weight_masks != "call",
                # the exact run takes this kernel anyway (decided once per process): the estimate follows it
                int64_kernel=cfg.device == "cpu" and matmul.int64_gemm_faster(),
                # the in-process run releases the plaintext model first unless its reference needs the run
                # (comet_core/roles/tcp_run.py keeps it: counted)
                plain_during_run=(reference_needs_run(load_system(cfg.system))
                                  or cfg.get("transport", {}).get("name", "inprocess") != "inprocess"),
                # the in-process CPU run streams reused masks (mpc/weight_masks.py); a tcp party keeps them
                streamed_masks=(cfg.device == "cpu" and matmul.streams_masks()
                                and cfg.get("transport", {}).get("name", "inprocess") == "inprocess"))
    need = memory.exact_run_bytes(cfg.model, L, T, **opts)
    have = memory.available_bytes()
    if need <= have:
        return
    fit = max((n for n in range(1, L + 1) if memory.exact_run_bytes(cfg.model, n, T, **opts) <= have), default=0)
    one = memory.exact_run_bytes(cfg.model, 1, T, **opts)
    layers_hint = (f"model.layers={fit} (of {L}) fits, " if fit else
                   f"not even model.layers=1 fits (about {memory.gib(one)}: the embedding and LM head come with "
                   "every layer count), ")
    raise CometError(f"an exact run of {cfg.model.name} ({L} layers) needs about {memory.gib(need)} but "
                     f"{memory.gib(have)} is available; use mode=cost (prices the full model on shapes), "
                     f"{layers_hint}or force=true to try anyway")


def engine_config(cfg):
    from comet_core.mpc.engine import EngineConfig, FunctionConfig

    from comet_core.config.typed import engine_params

    e = engine_params(cfg.engine)   # EngineSchema: its defaults fill what a YAML leaves out
    return EngineConfig(
        frac_bits=e.frac_bits, truncation=e.truncation, weight_masks=str(e.weight_masks),
        reuse_weight_masks=None if e.reuse_weight_masks is None else bool(e.reuse_weight_masks),
        check_ranges=bool(e.check_ranges), max_method=str(e.max_method), comparison=str(e.comparison),
        relu_bits=int(e.relu_bits), relu_range=int(e.relu_range),
        functions=FunctionConfig(exp_iterations=e.exp_iterations, exp_clamp=bool(e.exp_clamp), reciprocal_nr_iters=e.reciprocal_nr_iters,
                                 reciprocal_range=tuple(e.reciprocal_range), inv_sqrt_nr_iters=e.inv_sqrt_nr_iters,
                                 inv_sqrt_range=tuple(e.inv_sqrt_range), sigmoid_nr_iters=e.sigmoid_nr_iters))


def prompt_ids(tok, cfg) -> list[int]:
    """The client's prompt as token ids; prompt_len repeats the text's tokens to reach that length."""
    from comet_core.models.zoo import check_positions

    ids = tok.encode(load_prompt(cfg))
    if cfg.prompt_len is not None:
        reps = -(-cfg.prompt_len // max(len(ids), 1))
        ids = (ids * reps)[: cfg.prompt_len]
    check_positions(len(ids), cfg.model, cfg.gen_tokens)
    return ids


def check_party_config(cfg) -> None:
    """What a tcp run needs beyond the in-process checks."""
    from comet_core.errors import require

    require(cfg.mode == "exact", "transport=tcp runs mode=exact (cost mode has no data to send)")
    t = cfg.transport
    require(float(t.timeout_s) > 0 and float(t.connect_timeout_s) > 0,
            "transport.timeout_s and transport.connect_timeout_s must be positive")
    require(int(t.max_frame_bytes) >= 1024, "transport.max_frame_bytes must be at least 1024")
    require(cfg.seed is None or bool(t.get("insecure_seed", False)),
            f"seed={cfg.seed} with transport=tcp lets every role derive every key (any role could recover the prompt "
            "and every share): leave seed out (keys from the OS), or add transport.insecure_seed=true for a "
            "reproducible, insecure test run")
    for r in ROLES:
        require(r in t.hosts and str(t.hosts[r]), f"transport.hosts.{r} must name the host of role {r}")


def reference_needs_run(system) -> bool:
    """Whether the plaintext reference depends on the private run: a sparse system (Comet) compares with
    the plaintext model under the masks its private run revealed (``system.state.records``). Any other
    system's reference is a function of the weights and the prompt alone, so it may run first."""
    return getattr(getattr(system, "state", None), "records", None) is not None
