"""Selection (-k, xfail files, shards), the argument-naming check and the likely causes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from attnref.conformance.causes import likely_causes
from attnref.conformance.runner import names_argument
from attnref.conformance.selection import keyword_matcher, parse_shard, read_xfails, shard


@pytest.mark.parametrize(
    ("expression", "key", "selected"),
    [
        ("mask", "global_attention/mask-per-head/float16", True),
        ("MASK", "global_attention/mask/float16", True),
        ("mask and not float16", "global_attention/mask/float16", False),
        ("softcap or mask", "local_attention/softcap/float32", True),
        ("not (softcap or mask)", "local_attention/basic/float32", True),
        ("local and (lq- or window)", "local_attention/window-0/float64", True),
        ("local and (lq- or window)", "global_attention/lq-gt-lk-top-left/float64", False),
    ],
)
def test_keyword_expressions(expression: str, key: str, selected: bool) -> None:
    assert keyword_matcher(expression)(key) is selected


@pytest.mark.parametrize("expression", ["", "a and", "or a", "(a", "a)", "a b", "not"])
def test_malformed_keyword_expressions_name_k(expression: str) -> None:
    with pytest.raises(ValueError, match=r"^-k: expected"):
        keyword_matcher(expression)


def test_shards_are_disjoint_and_cover_everything() -> None:
    items = list(range(23))
    parts = [shard(items, k, 4) for k in range(1, 5)]
    assert sorted(i for part in parts for i in part) == items and all(parts)
    assert parse_shard("2/5") == (2, 5)
    for bad in ("0/3", "4/3", "1-3", "a/b"):
        with pytest.raises(ValueError, match=r"^--shard: expected K/N"):
            parse_shard(bad)


def test_xfail_file_format(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("# comment\n\nglobal_attention/*/float16  # slow path\nskip local_attention/long*/*\n")
    first, second = read_xfails(path)
    assert (first.pattern, first.reason, first.skip) == ("global_attention/*/float16", "slow path", False)
    assert first.line == 3
    assert second.skip and second.reason == "listed in x.txt:4" and second.matches("local_attention/long-kv/float32")
    path.write_text("a b\n")
    with pytest.raises(ValueError, match="xfail: expected"):
        read_xfails(path)


def test_an_error_message_must_name_the_argument_as_a_word() -> None:
    assert names_argument("q: expected 4 dimensions, got 3", "q")
    assert names_argument("invalid value for 'kv_lengths' (got [6, 2])", "kv_lengths")
    assert not names_argument("seq too long", "q")
    assert not names_argument("operands could not be broadcast together", "k")
    assert not names_argument("q_lengths: expected ...", "q")


def _result(case: str, status: str, dtype: str = "float32") -> SimpleNamespace:
    return SimpleNamespace(op="global_attention", case=case, dtype=dtype, status=status, xfail=None)


def test_likely_causes() -> None:
    alignment = [_result("lq-lt-lk-bottom-right", "fail"), _result("lq-gt-lk-bottom-right", "fail"),
                 _result("lq-lt-lk-top-left", "pass"), _result("basic", "pass")]  # fmt: skip
    assert any(c.startswith("alignment") for c in likely_causes(alignment))
    mixed = [*alignment[:2], _result("lq-lt-lk-top-left", "fail")]
    assert not any(c.startswith("alignment") for c in likely_causes(mixed))
    lengths = [_result("kv-lengths", "fail"), _result("q-kv-lengths", "fail"), _result("basic", "pass")]
    assert any("lengths" in c for c in likely_causes(lengths))
    low = [_result("basic", "fail", "float16"), _result("basic", "pass", "float32")]
    assert any("16-bit" in c for c in likely_causes(low))
    assert likely_causes([_result("basic", "pass")]) == []
