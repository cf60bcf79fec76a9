"""A verbose status's `info` JSON, with the rows' JSON text written into it as it is."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from crictl.api.inspect_info import info_json

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    fields=st.dictionaries(st.text(), _json, max_size=5),
    verbatim=st.dictionaries(st.text(), st.none() | _json, max_size=4),
    indent=st.sampled_from([None, 2]),
)
def test_info_is_the_fields_and_the_verbatim_json_as_one_object(
    fields: dict[str, Any], verbatim: dict[str, Any], indent: int | None
) -> None:
    """Whatever the fields (none included) and however the kept JSON text was written, the
    answer parses to one object: the fields, then each kept value (null where none)."""
    fields = {k: v for k, v in fields.items() if k not in verbatim}
    texts = {k: None if v is None else json.dumps(v, indent=indent) for k, v in verbatim.items()}
    assert json.loads(info_json(fields, texts)) == {**fields, **verbatim}


def test_the_kept_text_is_written_as_it_is() -> None:
    spec = '{"ociVersion": "1.1.0",\n "process": {"args": ["sh"]}}'
    info = info_json({"pid": 7}, {"runtimeSpec": spec, "cniResult": None})
    assert info == '{"pid": 7, "runtimeSpec": ' + spec + ', "cniResult": null}'
