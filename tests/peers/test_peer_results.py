"""The summary that writes the tables of docs/peers.md counts what the report says, UnsupportedError as unsupported."""

from __future__ import annotations

from peer_results import backend_tables, status_of


def _case(status: str, dtype: str = "float32", detail: str | None = None, case: str = "basic") -> dict:
    return {"op": "global_attention", "case": case, "dtype": dtype, "status": status, "detail": detail}


def test_an_unsupported_error_counts_as_unsupported_with_its_feature():
    declined = "attnref.errors.UnsupportedError: unsupported feature 'softcap': no soft-capping"
    assert status_of(_case("error", detail=declined)) == ("unsupported", "softcap")
    assert status_of(_case("error", detail="ValueError: boom")) == ("error", None)
    assert status_of(_case("unsupported", detail=declined)) == ("unsupported", "softcap")  # today's runner
    assert status_of(_case("unsupported", detail="backend does not support bfloat16")) == ("unsupported", None)


def test_the_table_counts_each_status_per_op_and_dtype_and_lists_what_did_not_pass():
    entry = {
        "cases": [
            _case("pass"),
            _case("pass", case="gqa"),
            _case("fail", detail="out[0, 0, 0, 1] = nan where the reference has 1 (3 such entries)", case="nan-x"),
            _case("fail", dtype="float16", detail="out[0, 0, 0, 1] = nan where the reference has 1 (4 such entries)",
                  case="nan-x"),
            _case("error", detail="attnref.errors.UnsupportedError: unsupported feature 'sinks'", case="sink"),
            _case("unsupported", dtype="bfloat16", detail="backend does not support bfloat16"),
            {"op": "luong_attention", "case": "dot", "dtype": "float32", "status": "unsupported",
             "detail": "backend does not implement luong_attention"},
        ]
    }  # fmt: skip
    text = backend_tables("peer", entry)
    assert "| global_attention | 0 / 0 / 0 / 1 | 0 / 1 / 0 / 0 | 2 / 1 / 0 / 1 | 0 / 0 / 0 / 0 |" in text
    assert "`sinks` (1)" in text
    assert "luong_attention" not in text  # an op the backend does not implement has no row
    grouped = "| `nan-x` | fail | float16, float32 | out[0, 0, 0, 1] = nan where the reference has 1 (...) |"
    assert "| global_attention " + grouped in text
