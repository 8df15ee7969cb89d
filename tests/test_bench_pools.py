"""Pools as composable filters over library metadata, and their string specs (expertise.bench.pools)."""

import pytest

from expertise.bench.pools import (
    Pool,
    all_members,
    architecture,
    baseline,
    experts,
    max_embedding_dim,
    max_parameters,
    parse_pool,
    parse_pools,
)
from expertise.errors import ConfigError
from expertise.library import MemberInfo


def info(name, kind, params, dim, arch, parent=None):
    return MemberInfo(name=name, kind=kind, parent=parent, domain=None, upstream_images=1000, parameters=params,
                      embedding_dim=dim, upstream_accuracy=0.5, preprocessing={}, architecture=arch)


MEMBERS = [
    info("base", "baseline", 1_000_000, 256, "bit_s"),
    info("exp_a", "full_expert", 1_000_000, 256, "bit_s", "base"),
    info("exp_b", "full_expert", 1_000_000, 256, "bit_s", "base"),
    info("ada_a", "adapter_expert", 1_100_000, 256, "bit_s", "base"),
    info("r50", "external", 25_000_000, 2048, "resnet50"),
    info("epn", "epn", 50_000, 64, "epn"),
]


def names(pool):
    return pool.names(MEMBERS, allow_empty=True)


def test_builtin_pools():
    assert names(all_members()) == ["base", "exp_a", "exp_b", "ada_a", "r50"]  # never the EPN
    assert names(experts()) == ["exp_a", "exp_b", "ada_a"]
    assert names(baseline()) == ["base"]
    assert names(max_parameters(5e6)) == ["base", "exp_a", "exp_b", "ada_a"]
    assert names(max_parameters(1_000_000)) == ["base", "exp_a", "exp_b"]
    assert names(max_embedding_dim(256)) == ["base", "exp_a", "exp_b", "ada_a"]
    assert names(architecture("resnet50")) == ["r50"]
    assert names(experts() & max_parameters(1e6)) == ["exp_a", "exp_b"]


def test_parse_specs():
    assert names(parse_pool("all")) == names(all_members())
    assert names(parse_pool("experts")) == ["exp_a", "exp_b", "ada_a"]
    assert names(parse_pool("baseline")) == ["base"]
    assert names(parse_pool("params<=5e6")) == ["base", "exp_a", "exp_b", "ada_a"]
    assert names(parse_pool("dim<=256")) == ["base", "exp_a", "exp_b", "ada_a"]
    assert names(parse_pool("arch=bit_s")) == ["base", "exp_a", "exp_b", "ada_a"]
    assert names(parse_pool("experts+params<=1e6")) == ["exp_a", "exp_b"]
    assert names(parse_pool("arch=bit_s, kind=adapter_expert")) == ["ada_a"]
    assert names(parse_pool("full_experts")) == ["exp_a", "exp_b"]
    assert names(parse_pool("params>1e6")) == ["ada_a", "r50"]
    assert names(parse_pool("dim=2048")) == ["r50"]
    assert names(parse_pool("name=exp_*")) == ["exp_a", "exp_b"]
    assert names(parse_pool("all+external")) == ["r50"]


def test_spec_round_trips():
    for spec in ("all", "experts+params<=5e6", "arch=bit_s,dim<=256", "kind=external", "params>1.5e6"):
        pool = parse_pool(spec)
        again = parse_pool(pool.spec)
        assert again.spec == pool.spec and names(again) == names(pool)
    assert parse_pool("experts+params<=5e6").spec == "experts+params<=5000000"
    assert isinstance(parse_pool(parse_pool("all")), Pool)
    assert list(parse_pools("all; experts")) == ["all", "experts"]


@pytest.mark.parametrize("spec, match", [
    ("", "non-empty"),
    ("bogus", "cannot read pool term"),
    ("experts++all", "empty term"),
    ("params<=abc", "needs a number"),
    ("params<=-1", "non-negative"),
    ("dim<=inf", "non-negative"),
    ("kind=epn", "selection network"),
    ("kind=nope", "unknown member kind"),
    ("arch=", "cannot read pool term"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_pool(spec)


def test_empty_pool_is_an_error_unless_allowed():
    pool = parse_pool("experts+arch=resnet50")
    with pytest.raises(ConfigError, match="matches none"):
        pool.select(MEMBERS)
    assert pool.select(MEMBERS, allow_empty=True) == []
