"""Model pools as filters over library metadata (paper 002, section 4.1: the same strategies are
compared on several pools, e.g. all models, experts only, ResNet-50 only).

A pool never loads a model: it filters :class:`~expertise.library.MemberInfo` entries, so pools
can be formed and compared before anything is embedded or fine-tuned. Expert prediction networks
(kind ``"epn"``) are selection machinery, not transferable members, and are never in a pool.

Pools compose by intersection, in code (``experts() & max_parameters(5e6)``) or as a string spec
(:func:`parse_pool`): terms joined by ``+`` or ``,``, every term must hold::

    all                   every member (except EPNs)
    experts               full and adapter experts
    full_experts          full experts only
    adapter_experts       adapter experts only
    baseline              the baseline(s) only
    external              externally trained members only
    kind=<kind>           members of one kind (see expertise.library.KINDS)
    arch=<name>           one architecture family, e.g. arch=bit_s
    params<=<n>           at most n parameters (also <, >=, >, =); n may be written 5e6
    dim<=<n>              embedding dimension at most n (same operators)
    name=<glob>           member names matching a shell-style pattern, e.g. name=bit_s.*
                          (a pattern cannot contain '+' or ',')
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from expertise.errors import ConfigError
from expertise.library import KINDS, MemberInfo

NOT_IN_POOLS = ("epn",)
EXPERT_KINDS = ("full_expert", "adapter_expert")

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "=": operator.eq, "==": operator.eq,
}
_COMPARE = re.compile(r"^(params|parameters|dim|embedding_dim)\s*(<=|>=|==|<|>|=)\s*(.+)$")
_KEYED = re.compile(r"^(kind|arch|architecture|name)\s*=\s*(.+)$")


@dataclass(frozen=True)
class Filter:
    """One condition on a member's metadata; ``spec`` is its canonical spelling in a pool spec."""

    spec: str
    test: Callable[[MemberInfo], bool]

    def __call__(self, info: MemberInfo) -> bool:
        return bool(self.test(info))


@dataclass(frozen=True)
class Pool:
    """An intersection of filters; EPNs are always excluded. ``spec`` round-trips through
    :func:`parse_pool`."""

    filters: tuple[Filter, ...] = ()

    @property
    def spec(self) -> str:
        return "+".join(f.spec for f in self.filters) or "all"

    def __str__(self) -> str:
        return self.spec

    def __and__(self, other: Pool | Filter) -> Pool:
        extra = other.filters if isinstance(other, Pool) else (other,)
        return Pool(self.filters + tuple(extra))

    def contains(self, info: MemberInfo) -> bool:
        return info.kind not in NOT_IN_POOLS and all(f(info) for f in self.filters)

    def select(self, members: Iterable[MemberInfo], allow_empty: bool = False) -> list[MemberInfo]:
        """The members in the pool, in the given (library) order. Raises ConfigError when none is,
        unless ``allow_empty``: a benchmark over an empty pool is always a mistake in the spec."""
        members = list(members)
        chosen = [m for m in members if self.contains(m)]
        if not chosen and not allow_empty:
            have = sorted({f"{m.kind}/{m.architecture or '?'}" for m in members if m.kind not in NOT_IN_POOLS})
            raise ConfigError(
                f"pool {self.spec!r} matches none of the {len(members)} library members (kinds/architectures "
                f"present: {', '.join(have) or 'none'}); loosen the pool spec"
            )
        return chosen

    def names(self, members: Iterable[MemberInfo], allow_empty: bool = False) -> list[str]:
        return [m.name for m in self.select(members, allow_empty)]


def _pool(*filters: Filter) -> Pool:
    return Pool(tuple(filters))


def all_members() -> Pool:
    """Every member except expert prediction networks."""
    return Pool()


def of_kind(kind: str) -> Pool:
    """Members of one kind (``MemberInfo.kind``, one of expertise.library.KINDS)."""
    if kind in NOT_IN_POOLS:
        raise ConfigError(f"kind {kind!r} is a selection network, not a pool member; choose from "
                          f"{[k for k in KINDS if k not in NOT_IN_POOLS]}")
    if kind not in KINDS:
        raise ConfigError(f"unknown member kind {kind!r}; choose from {[k for k in KINDS if k not in NOT_IN_POOLS]}")
    return _pool(Filter(f"kind={kind}", lambda m: m.kind == kind))


def experts() -> Pool:
    """Full and adapter experts (not the baseline they were tuned from)."""
    return _pool(Filter("experts", lambda m: m.kind in EXPERT_KINDS))


def baseline() -> Pool:
    return _pool(Filter("baseline", lambda m: m.kind == "baseline"))


def architecture(name: str) -> Pool:
    """One architecture family (``MemberInfo.architecture``, e.g. the backbone name ``bit_s``)."""
    if not name:
        raise ConfigError("arch= needs an architecture name, e.g. arch=bit_s")
    return _pool(Filter(f"arch={name}", lambda m: m.architecture == name))


def _count(value: float | int | str, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} needs a number (e.g. 5e6 or 256), got {value!r}") from None
    if not 0 <= v < float("inf"):
        raise ConfigError(f"{what} needs a finite non-negative number, got {value!r}")
    return v


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def compare(field: str, op: str, value: float | int | str) -> Pool:
    """``parameters`` or ``embedding_dim`` compared with ``value`` by ``op`` (<=, >=, <, >, =)."""
    key = {"params": "parameters", "parameters": "parameters", "dim": "embedding_dim", "embedding_dim": "embedding_dim"}.get(field)
    if key is None:
        raise ConfigError(f"can only compare params or dim, got {field!r}")
    if op not in _OPS:
        raise ConfigError(f"unknown comparison {op!r}; use one of {sorted(_OPS)}")
    short = "params" if key == "parameters" else "dim"
    v = _count(value, f"{short}{op}")
    fn = _OPS[op]
    op = "=" if op == "==" else op
    return _pool(Filter(f"{short}{op}{_fmt(v)}", lambda m: fn(float(getattr(m, key)), v)))


def max_parameters(p: float | int) -> Pool:
    """Members with at most ``p`` parameters."""
    return compare("params", "<=", p)


def max_embedding_dim(d: float | int) -> Pool:
    """Members whose embedding (pre-logits) dimension is at most ``d``."""
    return compare("dim", "<=", d)


def name_matches(pattern: str) -> Pool:
    if not pattern:
        raise ConfigError("name= needs a pattern, e.g. name=bit_s.*")
    return _pool(Filter(f"name={pattern}", lambda m: fnmatch.fnmatchcase(m.name, pattern)))


_WORDS: dict[str, Callable[[], Pool]] = {
    "all": all_members,
    "experts": experts,
    "full_experts": lambda: of_kind("full_expert"),
    "adapter_experts": lambda: of_kind("adapter_expert"),
    "baseline": baseline,
    "baselines": baseline,
    "external": lambda: of_kind("external"),
}


def _term(term: str, spec: str) -> Pool:
    t = term.strip()
    if t.lower() in _WORDS:
        return _WORDS[t.lower()]()
    if m := _COMPARE.fullmatch(t):
        return compare(m.group(1), m.group(2), m.group(3).strip())
    if m := _KEYED.fullmatch(t):
        key, value = m.group(1), m.group(2).strip()
        if key == "kind":
            return of_kind(value)
        if key in ("arch", "architecture"):
            return architecture(value)
        return name_matches(value)
    raise ConfigError(
        f"cannot read pool term {t!r} in {spec!r}; use all, experts, full_experts, adapter_experts, baseline, "
        "external, kind=K, arch=NAME, name=GLOB, params<=N or dim<=N, joined by '+' or ','"
    )


def parse_pool(spec: str | Pool) -> Pool:
    """A :class:`Pool` from a spec such as ``"experts+params<=5e6"`` or ``"arch=bit_s,dim<=256"``
    (see the module docstring); every term must hold. Raises ConfigError on a bad spec."""
    if isinstance(spec, Pool):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a pool spec must be a non-empty string such as 'all' or 'experts+dim<=256', got {spec!r}")
    terms = re.split(r"[+,]", spec)
    if any(not t.strip() for t in terms):
        raise ConfigError(f"pool spec {spec!r} has an empty term; join terms with a single '+' or ','")
    pool = Pool()
    for t in terms:
        pool = pool & _term(t, spec)
    return pool


def parse_pools(specs: Sequence[str] | str) -> dict[str, Pool]:
    """Several pools by spec, keyed by the spec as given (e.g. from ``--pool all --pool experts``);
    a single string may list pools separated by ';'."""
    items = [s for s in specs.split(";")] if isinstance(specs, str) else list(specs)
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise ConfigError("give at least one pool spec, e.g. 'all'")
    return {s: parse_pool(s) for s in items}
