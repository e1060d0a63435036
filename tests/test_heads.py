"""The Semantic FPN head."""

import pytest
import torch

from diffprompt.heads import SemanticFPN, levels_of


def test_semantic_fpn_shapes_and_attention_maps_concatenated():
    ch = {"s0": 32, "s1": 16, "a1": 19, "s2": 8}
    st = {"s0": 16, "s1": 8, "a1": 8, "s2": 4}
    head = SemanticFPN(ch, st, num_classes=19, fpn_width=16, head_width=8)
    feats = {k: torch.randn(2, c, 64 // st[k], 128 // st[k]) for k, c in ch.items()}
    assert head(feats).shape == (2, 19, 16, 32)  # the finest stride
    assert head.lateral[1].in_channels == 16 + 19  # a1 joined s1
    with pytest.raises(KeyError, match="a1"):
        head({k: v for k, v in feats.items() if k != "a1"})
    with pytest.raises(ValueError, match="power-of-two"):
        SemanticFPN({"s0": 4, "s1": 4}, {"s0": 4, "s1": 12})


def test_levels_group_maps_by_stride_finest_first():
    levels = levels_of({"s2": 8, "s0": 32, "a2": 19}, {"s2": 4, "s0": 16, "a2": 4})
    assert levels == [(4, ["a2", "s2"]), (16, ["s0"])]
    with pytest.raises(ValueError, match="different maps"):
        levels_of({"s0": 4}, {"s1": 4})


def test_the_head_is_a_function_of_its_inputs_only():
    ch, st = {"s0": 8, "s1": 8}, {"s0": 8, "s1": 4}
    torch.manual_seed(0)
    head = SemanticFPN(ch, st, fpn_width=8, head_width=8).eval()
    feats = {"s0": torch.randn(1, 8, 4, 8), "s1": torch.randn(1, 8, 8, 16)}
    both = {k: torch.cat([v, v.flip(-1)]) for k, v in feats.items()}
    out = head(both)
    torch.testing.assert_close(out[0], head(feats)[0])  # batch items are independent
    assert not torch.allclose(out[0], out[1])
