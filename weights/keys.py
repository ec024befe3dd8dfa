"""Renaming state-dict keys by rule tables: a rule is (regex, replacement), tried in order.

A replacement is a `re` template (r"\1.to_q.") or a function of the match. `rename_prefix`
anchors each rule at the key's start and applies the first that matches; `rename_parts`
substitutes every rule anywhere in the key. Keys no rule matches keep their name, so the
strict loader reports them as unexpected instead of their being dropped silently.
"""
from __future__ import annotations

import re
from typing import Callable, Union

from torch import Tensor

Rule = tuple[str, Union[str, Callable[[re.Match], str]]]

# diffusers < 0.14 saved the VAE's mid-block attention as query/key/value/proj_attn
# (diffusers' ModelMixin._fix_state_dict_keys_on_load renames them the same way)
DEPRECATED_VAE_ATTENTION: list[Rule] = [
    (r"(attentions\.0)\.query\.", r"\1.to_q."),
    (r"(attentions\.0)\.key\.", r"\1.to_k."),
    (r"(attentions\.0)\.value\.", r"\1.to_v."),
    (r"(attentions\.0)\.proj_attn\.", r"\1.to_out.0."),
]


def rename_prefix(state: dict[str, Tensor], rules: list[Rule]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key, hits = re.subn(f"^(?:{pattern})", repl, key, count=1)
            if hits:
                break
        out[key] = value
    return out


def rename_parts(state: dict[str, Tensor], rules: list[Rule]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
