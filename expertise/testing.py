"""The pool-member contract as a public check, in the spirit of scikit-learn's ``check_estimator``:
someone who registers a member class outside this repository (``register_member_class``) runs
``check_member`` on an instance of it before relying on it, and the project's own tests run it on
every built-in class (``tests/test_member_contract.py``).

A member passes when:

1. its ``member_config()`` names its registered class, and ``model_from_config`` rebuilds that class;
2. ``embed`` of prepared images is float32 [N, D], finite and deterministic, each image's row the
   same (to float tolerance) when it is embedded alone;
3. ``upstream_logits`` is float32 [N, L] and equals ``forward`` where it declares an upstream head,
   and is a one-line ``ConfigError`` ("no upstream head") where it does not;
4. its ``preprocessing`` round-trips through JSON and is the one its config records;
5. rebuilt from its config (JSON through and through) with its weights, it gives identical outputs;
6. stored in a library and loaded back, it gives identical outputs, in eval mode;
7. ``reset_head(k)`` gives a zero task head of k outputs, leaves the body as it was, and the
   fine-tuned member rebuilds from its config.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from expertise.errors import ConfigError
from expertise.models.backbones import Preprocessing, model_from_config, prepare

N = 5  # images per check


class ContractError(AssertionError):
    """A member broke the contract; the message says which rule and how."""


def _require(ok: bool, rule: str) -> None:
    if not ok:
        raise ContractError(rule)


def _images(size: int, n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _x(model: nn.Module) -> torch.Tensor:
    return prepare(_images(model.preprocessing.size), model.preprocessing)


def _outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything the contract lets a caller read from a member."""
    with torch.inference_mode():
        out = {"embed": model.embed(x)}
        if model.has_upstream_head:
            out["upstream_logits"] = model.upstream_logits(x)
        return out


def _same_outputs(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], rule: str) -> None:
    _require(got.keys() == want.keys(), f"{rule}: it reads {sorted(got)} where the original reads {sorted(want)}")
    for k in want:
        _require(torch.equal(got[k], want[k]), f"{rule}: its {k} differ from the original's")


def check_member(model: nn.Module, embedding_dim: int | None = None, upstream_outputs: int | None = None,
                 manifest_preprocessing: dict | None = None, kind: str = "external") -> None:
    """Check ``model`` against the pool-member contract (the module docstring's rules); a
    :class:`ContractError` naming the rule broken otherwise. ``embedding_dim`` and
    ``upstream_outputs`` (0: no upstream head) are what the member should have, where known;
    ``manifest_preprocessing`` what a library's manifest says of it; ``kind`` the library kind it is
    stored as for rule 6 (``external`` for a class from outside the project)."""
    model = model.eval()
    _registered(model)
    x = _x(model)
    dim = _embeds(model, x, embedding_dim)
    _upstream_head(model, x, model.member_config().get("num_outputs") if upstream_outputs is None else upstream_outputs)
    _preprocessing(model, manifest_preprocessing)
    want = _outputs(model, x)
    _rebuilds(model, x, want)
    _stores(model, x, want, dim, kind)
    _task_head(model, x, want, dim)


def _registered(model: nn.Module) -> None:
    from expertise.models.backbones import MEMBER_CLASSES

    cfg, cls = model.member_config(), type(model).__name__
    _require(cfg.get("class") == cls, f"member_config()['class'] is {cfg.get('class')!r}, not its class {cls!r}")
    _require(cls in MEMBER_CLASSES, f"{cls} is not registered (register_member_class({cls!r}))")
    _require(type(model_from_config(cfg)) is type(model), f"model_from_config does not rebuild a {cls}")


def _embeds(model: nn.Module, x: torch.Tensor, embedding_dim: int | None) -> int:
    size = model.preprocessing.size
    _require(x.dtype == torch.float32 and x.shape == (N, 3, size, size), "prepare() must give float32 [N, 3, S, S]")
    with torch.inference_mode():
        first, second, alone = model.embed(x), model.embed(x), model.embed(x[:1])
    dim = first.shape[-1] if embedding_dim is None else embedding_dim
    _require(first.dtype == torch.float32 and first.shape == (N, dim), f"embed gives {first.dtype} {tuple(first.shape)}, "
             f"not float32 {(N, dim)}")
    _require(model.num_features == dim, f"num_features is {model.num_features}, embed gives {dim}")
    _require(bool(torch.isfinite(first).all()), "embed gives non-finite values")
    _require(torch.equal(first, second), "embed is not deterministic in eval mode (dropout? batch statistics?)")
    _require(torch.allclose(alone, first[:1], rtol=1e-4, atol=1e-5), "an image embedded alone differs from the same "
             "image in a batch (batch statistics?)")
    return dim


def _no_upstream_head(model: nn.Module, x: torch.Tensor, when: str) -> None:
    try:
        model.upstream_logits(x)
    except ConfigError as e:
        _require("no upstream head" in str(e), f"upstream_logits {when} says {e!r}, not 'no upstream head'")
    else:
        raise ContractError(f"upstream_logits {when} must be a ConfigError")


def _upstream_head(model: nn.Module, x: torch.Tensor, outputs: int) -> None:
    cfg = model.member_config()
    _require(model.has_upstream_head == (outputs > 0), f"has_upstream_head is {model.has_upstream_head} with "
             f"{outputs} upstream outputs")
    _require(cfg.get("num_outputs") == outputs, f"member_config()['num_outputs'] is {cfg.get('num_outputs')}, not {outputs}")
    if not model.has_upstream_head:
        _no_upstream_head(model, x, "without an upstream head")
        return
    with torch.inference_mode():
        logits = model.upstream_logits(x)
        _require(logits.dtype == torch.float32 and logits.shape == (N, outputs),
                 f"upstream_logits gives {logits.dtype} {tuple(logits.shape)}, not float32 {(N, outputs)}")
        _require(torch.equal(logits, model.upstream_logits(x)), "upstream_logits is not deterministic")
        _require(torch.equal(logits, model(x)), "before reset_head, forward must be the upstream head")


def _preprocessing(model: nn.Module, manifest: dict | None) -> None:
    prep = model.preprocessing
    _require(isinstance(prep, Preprocessing), "preprocessing must be a Preprocessing")
    _require(Preprocessing.from_json(json.loads(json.dumps(prep.to_json()))) == prep, "preprocessing does not round-trip "
             "through JSON")
    _require(model.member_config()["preprocessing"] == prep.to_json(), "member_config()['preprocessing'] is not its "
             "preprocessing")
    if manifest is not None:
        _require(manifest == prep.to_json(), "the manifest's preprocessing is not the member's")


def _rebuilds(model: nn.Module, x: torch.Tensor, want: dict[str, torch.Tensor]) -> None:
    cfg = model.member_config()
    rebuilt = model_from_config(json.loads(json.dumps(cfg)))
    _require(rebuilt.state_dict().keys() == model.state_dict().keys(), "its rebuild has other parameters")
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    _require(rebuilt.member_config() == cfg, "its rebuild has another member_config()")
    _same_outputs(want, _outputs(rebuilt, x), "rebuilt from its config")


def _stores(model: nn.Module, x: torch.Tensor, want: dict[str, torch.Tensor], dim: int, kind: str) -> None:
    from expertise.library import Library, MemberInfo

    with tempfile.TemporaryDirectory(prefix="expertise-contract-") as tmp:
        lib = Library.create(Path(tmp) / "lib", None)
        if kind == "external":
            from expertise.models.external import ExternalSource
            from expertise.pool import add_external

            source = ExternalSource("checkpoint", getattr(model, "architecture", type(model).__name__), "test")
            info = add_external(lib, model, source, name="m")
        else:
            info = lib.add(MemberInfo("m", kind, None, None, 1, 0, 0, None, {}), model)
        _require(info.embedding_dim == dim and info.preprocessing == model.preprocessing.to_json(), "the library "
                 "records another embedding width or preprocessing than the member has")
        loaded = Library.open(lib.path).load("m")
        _require(type(loaded) is type(model) and not loaded.training, "a library must hand it back as its class, in eval mode")
        _same_outputs(want, _outputs(loaded, x), "stored and loaded back")
        _require(lib.verify() == [], f"the library it was stored in does not verify: {lib.verify()}")


def _task_head(model: nn.Module, x: torch.Tensor, want: dict[str, torch.Tensor], dim: int) -> None:
    for k in (1, 3):
        tuned = copy.deepcopy(model)
        tuned.reset_head(k)
        head = tuned.head
        _require(head.weight.shape == (k, dim) and head.bias.shape == (k,), f"reset_head({k}) gives a head of "
                 f"{tuple(head.weight.shape)}, not ({k}, {dim})")
        _require(not head.weight.any() and not head.bias.any(), "reset_head must give a zero head")
        _require(not tuned.has_upstream_head, "after reset_head there is no upstream head")
        cfg = tuned.member_config()
        _require(cfg["num_outputs"] == k and cfg["head_kind"] == "task", "member_config() of a task head must say "
                 f"num_outputs={k}, head_kind='task'")
        with torch.inference_mode():
            out = tuned(x)
        _require(out.dtype == torch.float32 and out.shape == (N, k) and not out.any(), "a zero task head must output "
                 "zeros of [N, k]")
        _no_upstream_head(tuned, x, "after reset_head")
        with torch.inference_mode():
            _require(torch.equal(tuned.embed(x), want["embed"]), "reset_head changed the body")
        again = model_from_config(json.loads(json.dumps(cfg)))
        again.load_state_dict(tuned.state_dict(), strict=True)
        with torch.inference_mode():
            _require(torch.equal(again.eval()(x), out), "a member with a task head does not rebuild from its config")
