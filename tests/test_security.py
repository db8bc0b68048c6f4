"""View-independence regression tests: what P1 receives, and what it opens, must not depend on the secrets.

P1 runs as a single party (comet_core/mpc/parties.run_pair) with its channel recording every exchange
(`PartyChannel.recorder`). For two different secret inputs, each run under its own keys (a fresh seed, as
a deployment's OS keys would be), the view must look uniform and the same:
  * per-bit test: each of the 64 bits of every received word and of every opened 64-bit value is 1 with
    frequency 1/2 (binomial z-test, Bonferroni over the 64 bits);
  * two-sample Kolmogorov-Smirnov test between the opened values of the two inputs (as fractions of 2^64).
False-alarm rate: each call of `assert_uniform_bits` or `assert_same_distribution` rejects a correct
protocol with probability <= 1e-6 (asymptotic binomial and KS bounds), so this file's ~40 checks raise a
false alarm with probability < 1e-4.
Positive controls: the same checks must fail on deliberately weakened randomness (the dealer's masks, or
every keyed stream, with their top 32 bits zero, monkeypatched in), so the tests have power.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from comet_core.mpc import arith, compare, nonlinear as nl, pairmax, ring
from comet_core.mpc import dealer as dealer_mod
from comet_core.mpc.dealer import Dealer
from comet_core.mpc.engine import AShare, EngineConfig
from comet_core.mpc.parties import run_pair
from comet_core.mpc.prg import PRG

ALPHA = 1e-6                 # false-alarm probability of one check
N = 1024                     # secret elements per run
Z_BIT = 5.73                 # two-sided normal quantile for ALPHA / 64 (Bonferroni over the bits)
KS_C = math.sqrt(-math.log(ALPHA / 2) / 2)   # Kolmogorov's asymptotic critical constant: 2.69


def _trunc(x: AShare) -> AShare:  # a product-sized word: x at scale 32, truncated by 16
    return arith.truncate(AShare(x.data * (1 << 16), x.mpc, x.frac + 16), 16)


def _trunc_square(x: AShare) -> AShare:   # exp's squaring step under fss: t and t^2 from truncate's one opening
    return arith.truncate_square(AShare(x.data * (1 << 16), x.mpc, x.frac + 16), 16)[1]


PROTOCOLS = {
    "relu": (compare.relu, lambda g: torch.randn(N, generator=g, dtype=torch.float64) * 4),
    "truncation": (_trunc, lambda g: torch.randn(N, generator=g, dtype=torch.float64) * 100),
    "truncate_square": (_trunc_square, lambda g: torch.randn(N, generator=g, dtype=torch.float64) * 100),
    "reciprocal": (nl.reciprocal, lambda g: 2.0 ** (torch.rand(N, generator=g, dtype=torch.float64) * 10)),
    "inv_sqrt": (nl.inv_sqrt, lambda g: 2.0 ** (torch.rand(N, generator=g, dtype=torch.float64) * 16 - 8)),
    "argmax": (lambda x: compare.argmax(x.reshape(8, N // 8)),
               lambda g: torch.randn(N, generator=g, dtype=torch.float64)),
    "max_pairs": (lambda x: pairmax.max_pairs(x.reshape(32, N // 32)),
                  lambda g: torch.randn(N, generator=g, dtype=torch.float64)),
    "argmax_last": (lambda x: pairmax.argmax_last(x.reshape(1, N)),
                    lambda g: torch.randn(N, generator=g, dtype=torch.float64)),
    # engine.comparison=fss (mpc/fss.py): the one opening is x + r under the dealer's uniform r
    "relu_fss": (compare.relu, lambda g: torch.randn(N, generator=g, dtype=torch.float64) * 4),
    "ltz_fss": (compare.ltz, lambda g: torch.randn(N, generator=g, dtype=torch.float64) * 1e-3),
    "argmax_fss": (lambda x: compare.argmax(x.reshape(8, N // 8)),
                   lambda g: torch.randn(N, generator=g, dtype=torch.float64)),
    # mpc/spline.py: the many-threshold opening x + r (fss.ltz_many), then Beaver and truncation openings
    "silu_fss": (nl.silu, lambda g: torch.randn(N, generator=g, dtype=torch.float64) * 4),
    "softmax_fss": (lambda x: nl.softmax(x.reshape(32, N // 32)),
                    lambda g: torch.randn(N, generator=g, dtype=torch.float64) * 3),
}
CONFIGS = {name: EngineConfig(comparison="fss")
           for name in ("relu_fss", "ltz_fss", "argmax_fss", "silu_fss", "softmax_fss")}
SECOND = {  # a second secret input, far from the first: constants, other signs, other magnitudes
    "relu": lambda: torch.full((N,), -7.25, dtype=torch.float64),
    "truncation": lambda: torch.full((N,), 3.0e4, dtype=torch.float64),
    "truncate_square": lambda: torch.full((N,), 3.0e4, dtype=torch.float64),
    "reciprocal": lambda: torch.full((N,), 0.01, dtype=torch.float64),
    "inv_sqrt": lambda: torch.full((N,), 1.0e6, dtype=torch.float64),
    "argmax": lambda: torch.arange(N, dtype=torch.float64) % 8,
    "max_pairs": lambda: torch.arange(N, dtype=torch.float64) % 8,
    "argmax_last": lambda: torch.full((N,), 2.5, dtype=torch.float64),
    "relu_fss": lambda: torch.full((N,), -7.25, dtype=torch.float64),
    "ltz_fss": lambda: torch.zeros(N, dtype=torch.float64),
    "argmax_fss": lambda: torch.arange(N, dtype=torch.float64) % 8,
    "silu_fss": lambda: torch.full((N,), -0.75, dtype=torch.float64),
    "softmax_fss": lambda: torch.arange(N, dtype=torch.float64) % 32,
}


def p1_log(fn, x: torch.Tensor, seed: int, config=None) -> list:
    """Run fn on a secret x as two single parties; return P1's channel record [(bits, sent, got)]."""
    def body(m):
        if m.rank == 1:
            m.channel.recorder = []
        fn(m.share(x))
        return m.channel.recorder

    _, log, _ = run_pair(body, config=config, seed=seed)
    return log


def p1_view(fn, x: torch.Tensor, seed: int, config=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run fn on a secret x as two single parties; return P1's (received words, opened 64-bit values)."""
    log = p1_log(fn, x, seed, config)
    received, opened = [], []
    for bits, sent, got in log:
        if sent is None:     # a one-way message (the shuffle's resharings): received, nothing opened
            received += [g.reshape(-1) for g in got if bits == 64]
            continue
        for s, g in zip(sent, got):
            if bits == 64:   # additive openings (Beaver, truncation, comparison masks)
                received.append(g.reshape(-1))
                opened.append((s + g).reshape(-1))
    return torch.cat(received), torch.cat(opened) if opened else torch.zeros(0, dtype=torch.int64)


def assert_uniform_bits(words: torch.Tensor, what: str) -> None:
    """Each bit of the words is 1 with frequency 1/2 (false alarm <= ALPHA)."""
    n = words.numel()
    ones = torch.stack([((words >> b) & 1).sum() for b in range(64)]).to(torch.float64)
    z = (ones - n / 2) / math.sqrt(n / 4)
    worst = int(z.abs().argmax())
    assert float(z.abs().max()) < Z_BIT, (f"{what}: bit {worst} is 1 in {int(ones[worst])} of {n} words "
                                          f"(z = {float(z[worst]):.1f}, limit {Z_BIT})")


def _unit(words: torch.Tensor) -> torch.Tensor:
    """Ring elements as fractions of 2^64 in [0, 1) (the top 53 bits)."""
    return ((words >> 11) & ((1 << 53) - 1)).to(torch.float64) / 2.0 ** 53


def assert_same_distribution(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Two-sample Kolmogorov-Smirnov test of the opened values for two inputs (false alarm <= ALPHA)."""
    ua, ub = torch.sort(_unit(a)).values, torch.sort(_unit(b)).values
    grid = torch.cat([ua, ub])
    fa = torch.searchsorted(ua, grid, right=True).to(torch.float64) / ua.numel()
    fb = torch.searchsorted(ub, grid, right=True).to(torch.float64) / ub.numel()
    d = float((fa - fb).abs().max())
    n, m = ua.numel(), ub.numel()
    limit = KS_C * math.sqrt((n + m) / (n * m))
    assert d < limit, f"{what}: KS distance {d:.4f} between the two inputs' openings (limit {limit:.4f})"


def check_view(name: str) -> None:
    fn, first = PROTOCOLS[name]
    xa = first(torch.Generator().manual_seed(11))
    xb = SECOND[name]()
    rec_a, open_a = p1_view(fn, xa, seed=101, config=CONFIGS.get(name))
    rec_b, open_b = p1_view(fn, xb, seed=202, config=CONFIGS.get(name))
    assert open_a.numel() == open_b.numel() >= N  # the view's shape does not depend on the secret either
    for tag, rec, opened in (("input A", rec_a, open_a), ("input B", rec_b, open_b)):
        assert_uniform_bits(rec, f"{name}: words P1 receives ({tag})")
        assert_uniform_bits(opened, f"{name}: values P1 opens ({tag})")
    assert_same_distribution(open_a, open_b, f"{name}: opened values")


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_p1_view_is_independent_of_the_secret(name):
    check_view(name)


# ---- positive controls: the same checks catch weakened randomness --------------------------------

LOW32 = (1 << 32) - 1


@pytest.fixture
def weak_dealer(monkeypatch):
    """A broken dealer: its own secrets (truncation and comparison masks) and the Beaver masks a, b
    have their top 32 bits zero (their shares still look random)."""
    orig_rand, orig_arith = Dealer._rand, Dealer._random_arith

    def rand(self, shape, bits=64, gen=None):
        r = orig_rand(self, shape, bits, gen)
        return r if r.is_meta or bits < 64 else r & LOW32

    def random_arith(self, shape, frac=0):
        share, _ = orig_arith(self, shape, frac)
        weak = share.data[1] & LOW32
        data = torch.stack([share.data[0], weak - share.data[0]])
        return AShare(data, self.mpc, frac), weak

    orig_shares = Dealer._random_shares

    def random_shares(self, shape):      # the masks drawn as stacked shares (matmul's b) alike
        data = orig_shares(self, shape)
        return torch.stack([data[0], (data[1] & LOW32) - data[0]])

    monkeypatch.setattr(Dealer, "_rand", rand)
    monkeypatch.setattr(Dealer, "_random_arith", random_arith)
    monkeypatch.setattr(Dealer, "_random_shares", random_shares)
    # the dealer's CPU steps (numpy or torch, mpc/xp.py) draw the same words without these helpers (bit for
    # bit the same items: tests/test_bitexact_small.py); off here (the generic steps), so that every item
    # is weakened
    monkeypatch.setattr(dealer_mod, "SMALL", -1)
    monkeypatch.setattr(Dealer, "_ns", lambda self, *shapes: None)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_positive_control_weak_dealer_masks_are_caught(name, weak_dealer):
    with pytest.raises(AssertionError, match="values P1 opens|opened values"):
        check_view(name)


@pytest.fixture
def weak_streams(monkeypatch):
    """Every keyed stream (input shares, dealer shares) with its top 32 bits zero."""
    orig, orig_fill = PRG.ring, PRG.fill_

    def ring_words(self, shape, device="cpu"):
        return orig(self, shape, device) & LOW32

    def fill_words(self, out):           # the in-place entry point (dealer shares) alike
        return orig_fill(self, out).bitwise_and_(LOW32)

    orig_np, orig_pieces = PRG.fill_np_, PRG.fill_pieces_np_

    def fill_np_words(self, out):        # the numpy entry points (the dealer's small items) alike
        out = orig_np(self, out)
        out &= LOW32
        return out

    def fill_pieces_words(self, out):
        out = orig_pieces(self, out)
        out &= LOW32
        return out

    monkeypatch.setattr(PRG, "ring", ring_words)
    monkeypatch.setattr(PRG, "fill_", fill_words)
    monkeypatch.setattr(PRG, "fill_np_", fill_np_words)
    monkeypatch.setattr(PRG, "fill_pieces_np_", fill_pieces_words)


def test_positive_control_weak_streams_are_caught_in_what_p1_receives(weak_streams):
    with pytest.raises(AssertionError, match="words P1 receives"):
        check_view("relu")


def test_checks_reject_a_plain_leak():
    """The statistics themselves: a view equal to the secret (no mask at all) fails both."""
    x = ring.encode(torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 16)
    with pytest.raises(AssertionError, match="bit"):
        assert_uniform_bits(x.abs(), "unmasked")
    with pytest.raises(AssertionError, match="KS distance"):
        assert_same_distribution(x, x + (1 << 62), "unmasked, shifted")
    u = torch.randint(-(1 << 63), (1 << 63) - 1, (4096,), generator=torch.Generator().manual_seed(1))
    assert_uniform_bits(u, "uniform words")      # and they pass uniform words
    assert_same_distribution(u[:2048], u[2048:], "uniform words")


# ---- Comet's oblivious shuffle: P1 only receives (one way) values masked by the dealer-P0 stream ------

def _shuffle(x: AShare) -> AShare:
    from comet_core.mpc.shuffle import Permutation, permute

    return permute(x.reshape(32, N // 32), -1, Permutation(x.mpc, N // 32))


def check_shuffle_view() -> None:
    xa = torch.randn(N, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    xb = torch.full((N,), 3.0e4, dtype=torch.float64)
    rec_a, _ = p1_view(_shuffle, xa, seed=101)
    rec_b, _ = p1_view(_shuffle, xb, seed=202)
    assert rec_a.numel() == rec_b.numel() == N
    assert_uniform_bits(rec_a, "shuffle: words P1 receives (input A)")
    assert_uniform_bits(rec_b, "shuffle: words P1 receives (input B)")
    assert_same_distribution(rec_a, rec_b, "shuffle: words P1 receives")


def test_shuffle_view_is_independent_of_the_secret():
    check_shuffle_view()


def test_positive_control_weak_streams_are_caught_in_the_shuffle(weak_streams):
    with pytest.raises(AssertionError, match="words P1 receives"):
        check_shuffle_view()


# ---- the simulation's blocked decode matmul (mpc/blocked.py): the values it opens, e and f -----------

def blocked_openings(w_plain: torch.Tensor, seed: int, monkeypatch) -> torch.Tensor:
    """Every value the simulation's blocked few-row matmul opens, for one row against a secret weight:
    e = x - a (from MPC.open_pair, where it is formed) and f = y - b, block by block."""
    from comet_core.mpc import blocked
    from comet_core.mpc.engine import MPC, EngineConfig

    monkeypatch.setattr(blocked, "BLOCK_ELEMENTS", 2048)   # several blocks
    opened, calls = [], []
    real_open, real_blocks = MPC.open_pair, blocked.blockkernel.block_products
    monkeypatch.setattr(MPC, "open_pair", staticmethod(lambda *a, **k: opened.append(
        real_open(*a, **k).clone()) or opened[-1]))
    def block_products(b, *a, y=None, **k):   # the block's f = (y0 - b0) + (y1 - b1), which the kernel forms
        calls.append(1)                       # inline (tests/test_blocked.py: the kernels equal this formula)
        if y is not None:
            opened.append(((y[0] - b[0]) + (y[1] - b[1])).clone())
        return real_blocks(b, *a, y=y, **k)

    monkeypatch.setattr(blocked.blockkernel, "block_products", block_products)
    m = MPC(EngineConfig(), seed=seed, mode="exact")
    x = m.share(torch.randn(1, w_plain.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    arith.matmul(x, m.register_weight(m.share(w_plain, owner="model_owner")))
    assert len(calls) > 1, "the blocked path did not run"
    return torch.cat([o.reshape(-1) for o in opened])


def check_blocked_view(monkeypatch) -> None:
    k, n = 64, 128
    wa = torch.randn(k, n, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    wb = torch.full((k, n), 3.0e4, dtype=torch.float64)
    oa, ob = blocked_openings(wa, 101, monkeypatch), blocked_openings(wb, 202, monkeypatch)
    assert oa.numel() == ob.numel() == k + k * n
    assert_uniform_bits(oa, "blocked matmul: values P1 opens (weight A)")
    assert_uniform_bits(ob, "blocked matmul: values P1 opens (weight B)")
    assert_same_distribution(oa, ob, "blocked matmul: opened values")


def test_blocked_matmul_openings_are_independent_of_the_weight(monkeypatch):
    check_blocked_view(monkeypatch)


def test_positive_control_weak_streams_are_caught_in_the_blocked_matmul(weak_streams, monkeypatch):
    with pytest.raises(AssertionError, match="values P1 opens|opened values"):
        check_blocked_view(monkeypatch)


# ---- seeds over tcp (issue 22, R1): a reproducibility seed lets every role derive every key -----------

def _replay_recovers_input(seed_victim, seed_replay) -> bool:
    """P1's attack on the client's input sharing: P1 holds x - r (its share); replaying the sharing of a
    dummy input under the seed it knows gives r (P0's share, from the client-P0 key P1 should not hold)."""
    from comet_core.mpc.engine import MPC, EngineConfig

    x = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(5))    # the client's token ids
    p1_share = MPC(EngineConfig(), seed=seed_victim).share(x).data[1]
    replayed_r = MPC(EngineConfig(), seed=seed_replay).share(torch.zeros_like(x)).data[0]
    return torch.equal(p1_share + replayed_r, x)


def test_a_seed_lets_any_role_recover_the_input_and_os_keys_do_not():
    """Why seed= is refused over tcp: with the seed, P1 alone recovers the client's input exactly;
    with OS keys (seed=null) the same replay recovers nothing."""
    assert _replay_recovers_input(7, 7)                   # the attack works under a shared seed
    assert not _replay_recovers_input(None, None)         # OS keys: the replay's r is another r
    assert not _replay_recovers_input(None, 7)


def _tcp_cfg(*over):
    from hydra import compose, initialize_config_dir

    from comet_core.config.schema import register

    register()
    conf = str(Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose("config", overrides=["model=tiny-opt", "model.layers=1", "gen_tokens=2", "transport=tcp",
                                            "force=true", *over])


def test_a_seed_over_tcp_is_refused_unless_declared_insecure():
    from comet_core.errors import ConfigError
    from experiments.run import validate_config

    with pytest.raises(ConfigError, match="insecure_seed"):
        validate_config(_tcp_cfg("seed=0"))
    validate_config(_tcp_cfg())                                         # seed=null: OS keys
    validate_config(_tcp_cfg("seed=0", "transport.insecure_seed=true"))  # declared, for reproducible tests
    validate_config(_tcp_cfg("transport=inprocess", "seed=0"))          # one process: no role to hide keys from


def _cli(*args, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=root, capture_output=True, text=True,
                          timeout=180)


def test_cli_refuses_a_seed_over_tcp_in_one_line(tmp_path):
    """run-experiment and comet party: exit 2, one line naming the flag, before any work (no run folder)."""
    out = tmp_path / "run"
    r = _cli("run-experiment", "transport=tcp", "seed=0", "model=tiny-opt", "model.layers=1", f"output_dir={out}",
             tmp_path=tmp_path)
    assert r.returncode == 2 and "insecure_seed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr
    assert not out.exists() and not list(tmp_path.glob(".run*"))
    r = _cli("party", "--role", "dealer", "transport=tcp", "seed=0", "transport.ports.p0=29500",
             "transport.ports.p1=29501", f"transport.keys_dir={tmp_path}", "--out", str(tmp_path / "dealer"),
             tmp_path=tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "insecure_seed" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_every_role_warns_of_a_declared_insecure_seed(tmp_path, caplog):
    """transport.insecure_seed=true: each role's log says INSECURE before it connects (here it then stops
    at the missing key files); without a seed no role warns."""
    import logging

    from comet_core.roles.party import ROLES, main

    over = ("transport.ports.p0=29500", "transport.ports.p1=29501")
    for seed, warned in ((("seed=0", "transport.insecure_seed=true"), True), ((), False)):
        for role in ROLES:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="comet.party"):
                assert main(role, _tcp_cfg(*seed, *over), str(tmp_path / "no-keys"), str(tmp_path / role)) == 2
            said = [r.getMessage() for r in caplog.records if "INSECURE" in r.getMessage()]
            assert (len(said) == 1 and said[0].startswith(f"{role}: INSECURE: seed=0")) if warned else not said, role


# ---- engine.comparison=fss: a weakened input mask r, and the DCF keys P1 holds -------------------------

@pytest.fixture(params=["zero", "low_entropy"])
def weak_fss_mask(monkeypatch, request):
    """The FSS comparison's mask r = 0 (x opened in the clear) or of 16 bits' entropy."""
    orig = Dealer.fss_mask

    def fss_mask(self, handle, n, relu):
        real = self._rand
        if request.param == "zero":
            self._rand = lambda shape, bits=64, gen=None: torch.zeros(tuple(shape), dtype=torch.int64)
        else:
            self._rand = lambda shape, bits=64, gen=None: real(shape, bits, gen) & 0xFFFF
        try:
            return orig(self, handle, n, relu)
        finally:
            del self._rand

    monkeypatch.setattr(Dealer, "fss_mask", fss_mask)


@pytest.mark.parametrize("name", ["relu_fss", "ltz_fss", "silu_fss"])
def test_positive_control_weak_fss_mask_is_caught(name, weak_fss_mask):
    with pytest.raises(AssertionError, match="values P1 opens|opened values"):
        check_view(name)


def dcf_key_words(alpha, seed: int) -> torch.Tensor:
    """The corrections of N DCF keys (what the dealer sends P1: mpc/dcf.py) as 64-bit words: the high
    words of s_cw (the low word's bit 0 is always 0: the control bit's place) and every V_cw."""
    import numpy as np
    from comet_core.mpc import dcf

    rng = np.random.default_rng(seed)
    beta = np.ones((N, 2), dtype=np.int64)
    keys = dcf.gen(alpha, beta, rng.integers(0, 1 << 64, (2, N, 2), dtype=np.uint64), 63)
    return torch.from_numpy(np.concatenate([keys.cw_s[..., 1].view(np.int64).reshape(-1),
                                            keys.cw_v.reshape(-1)]))


def check_dcf_keys() -> None:
    import numpy as np

    a = dcf_key_words(np.zeros(N, dtype=np.uint64), 1)                               # r mod 2^63 = 0
    b = dcf_key_words(np.random.default_rng(9).integers(0, 1 << 63, N, dtype=np.uint64), 2)
    assert_uniform_bits(a, "dcf: key words P1 receives (alpha 0)")
    assert_uniform_bits(b, "dcf: key words P1 receives (alpha uniform)")
    assert_same_distribution(a, b, "dcf: key words P1 receives")


def test_dcf_keys_look_uniform_and_independent_of_alpha():
    check_dcf_keys()


def test_positive_control_weak_dcf_prg_is_caught(monkeypatch):
    """A PRG whose words have their top 32 bits zero (every seed correction inherits it)."""
    from comet_core.mpc import dcf

    real = dcf.mmo
    monkeypatch.setattr(dcf, "USE_NUMBA", False)   # numpy's level steps, which call mmo (the same keys: test_dcf.py)
    monkeypatch.setattr(dcf, "mmo", lambda blocks: real(blocks) & np_low32())
    with pytest.raises(AssertionError, match="key words P1 receives"):
        check_dcf_keys()


def np_low32():
    import numpy as np

    return np.uint64(LOW32)


# ---- reduced rings (mpc/smallring.py: engine.relu_bits, system.predictor_bits) and truncate_square --------

def _relu16(x: AShare) -> AShare:   # the FFN's ReLU with its sign test on Z_2^16
    from comet_core.mpc import smallring

    return smallring.activation_relu(x)


REDUCED = {"relu_bits16": (_relu16, EngineConfig(relu_bits=16), lambda g: torch.randn(N, generator=g, dtype=torch.float64),
                         lambda: torch.full((N,), -3.5, dtype=torch.float64))}


def p1_small_openings(fn, x: torch.Tensor, seed: int, config) -> dict[int, torch.Tensor]:
    """The values P1 opens in messages of fewer than 64 bits, by width: (s + g) mod 2^bits (for 1-bit XOR
    openings bit 0 is the same either way; packed 1-bit words keep element 64 i at bit 0 of word i)."""
    out: dict[int, list] = {}
    for bits, sent, got in p1_log(fn, x, seed, config):
        if sent is None or bits >= 64:
            continue
        for s, g in zip(sent, got):
            out.setdefault(bits, []).append(((s + g) & ((1 << bits) - 1)).reshape(-1))
    return {b: torch.cat(v) for b, v in out.items()}


def assert_uniform_low_bits(words: torch.Tensor, bits: int, what: str) -> None:
    n = words.numel()
    ones = torch.stack([((words >> b) & 1).sum() for b in range(bits)]).to(torch.float64)
    z = (ones - n / 2) / math.sqrt(n / 4)
    assert float(z.abs().max()) < Z_BIT, f"{what}: bit {int(z.abs().argmax())} of {bits} is biased (z = {float(z.abs().max()):.1f})"


def check_small_view(name: str) -> None:
    fn, config, first, second = REDUCED[name]
    views = [p1_small_openings(fn, x, seed, config) for x, seed in ((first(torch.Generator().manual_seed(11)), 101),
                                                                    (second(), 202))]
    assert views[0].keys() == views[1].keys() and {1, 16} <= set(views[0]), sorted(views[0])
    for bits in views[0]:
        assert views[0][bits].numel() == views[1][bits].numel()
        for tag, v in zip(("input A", "input B"), views):
            assert_uniform_low_bits(v[bits], bits, f"{name}: {bits}-bit values P1 opens ({tag})")


def test_reduced_ring_openings_are_uniform_for_any_secret():
    check_small_view("relu_bits16")


@pytest.fixture
def weak_ring_mask(monkeypatch):
    """A broken dealer whose reduced-ring mask r has its top 8 of 16 bits zero (shares still look random)."""
    orig = Dealer.ring_compare_mask

    def ring_compare_mask(self, shape, bits):
        ra, rb = orig(self, shape, bits)
        if ra.is_meta:
            return ra, rb
        low = (1 << bits) - 1
        r = ((ra[0] + ra[1]) & low) & (low >> 8)
        return torch.stack([ra[0], (r - ra[0]) & low]), rb
    monkeypatch.setattr(Dealer, "ring_compare_mask", ring_compare_mask)


def test_positive_control_weak_ring_mask_is_caught(weak_ring_mask):
    with pytest.raises(AssertionError, match="16-bit values P1 opens"):
        check_small_view("relu_bits16")

