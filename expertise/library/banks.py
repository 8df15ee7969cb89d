"""Adapter-bank storage (paper 000, section 4.1): adapter experts share one backbone, so they are
stored without copying it.

:func:`add_bank` writes every expert's adapters once, to ``adapters/<bank>.safetensors`` (and the
bank's shape to ``adapters/<bank>.json``), and each expert becomes a manifest entry of kind
``adapter_expert`` whose ``parent`` names the stored backbone member (an ExpertModel, usually the
baseline) and whose folder holds only its config.json and label prior. Its ``files`` also list the
bank files by their library-relative path with their sha256, so the usual checks cover them;
``extra`` holds the bank, the expert's node and the parent's hash when the adapters were trained.
Loading an expert assembles it from the parent's weights and its slice of the bank.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from expertise import schema
from expertise.errors import ConfigError, LibraryError
from expertise.io import atomic_save_safetensors, atomic_write_json, sha256_file
from expertise.library import checks
from expertise.library.admission import check_prior, complete_info
from expertise.library.manifest import (
    ADAPTERS, BANK_FILE, CONFIG, MEMBERS, PRIOR, STAGING, WEIGHTS, MemberInfo, bank_config_path, bank_of,
    check_name, files_digest,
)
from expertise.library.transaction import Transaction
from expertise.models.adapters import AdapterBank, expert_key
from expertise.models.backbones import ExpertModel

if TYPE_CHECKING:
    from expertise.library.core import Library


def member_problems(lib: Library, name: str, info: MemberInfo, bank: str) -> list[str]:
    """An adapter expert also needs its bank path to be well-formed and its parent backbone to be
    the one its adapters were trained on."""
    if not bank.endswith(".safetensors") or not BANK_FILE.fullmatch(bank):
        return [f"member {name!r}: bank {bank!r} is not adapters/<bank>.safetensors; restore library.json"]
    if not isinstance(info.extra.get("node"), str):
        return [f"member {name!r}: its manifest entry names no bank node (extra.node); restore library.json"]
    parent = lib.entries().get(info.parent) if info.parent is not None else None
    if parent is None:
        return [f"member {name!r}: its backbone member {info.parent!r} is not in the library; restore it or "
                "re-create the adapter experts"]
    if bank_of(parent) is not None:
        return [f"member {name!r}: its backbone {info.parent!r} is itself an adapter expert; restore library.json"]
    if files_digest(parent.files) != info.extra.get("parent_hash"):
        return [f"member {name!r}: its backbone {info.parent!r} changed since the adapters were trained; "
                f"re-train the adapter experts on it or restore the old {info.parent!r}"]
    return []


def _prefix(info: MemberInfo) -> str:
    return f"{expert_key(str(info.extra.get('node')))}."


def expert_header_shapes(lib: Library, name: str, info: MemberInfo, bank: str, dtypes: bool = False) -> dict[str, Any]:
    """The tensors an adapter expert is assembled from, named as :class:`AdapterExpert` names them,
    from the safetensors headers of its parent and its bank: their shapes (``dtypes``: their dtypes)."""
    parent = str(info.parent)
    read = checks.header_dtypes if dtypes else checks.header_shapes
    shapes = read(lib.member_dir(check_name(parent)) / WEIGHTS, parent)
    prefix = _prefix(info)
    adapters = read(lib.path / bank, name, prefix)
    if not adapters:
        raise LibraryError(f"member {name!r}: {lib.path / bank} holds no adapters for node {info.extra.get('node')!r}; "
                           "re-create the adapter experts")
    shapes.update({f"adapters.{k[len(prefix):]}": v for k, v in adapters.items()})
    return shapes


def expert_state(lib: Library, name: str, info: MemberInfo, bank: str, verify: bool) -> dict[str, torch.Tensor]:
    """The parent's weights (backbone and head) plus this expert's adapters from the bank."""
    parent = info.parent
    if parent is None or parent not in lib:
        raise LibraryError(f"member {name!r}: its backbone member {parent!r} is not in the library; restore it or re-create the adapter experts")
    if verify:
        lib.check_member(parent)
    state = lib.load_tensors(lib.member_dir(parent) / WEIGHTS, parent)
    prefix = _prefix(info)
    adapters = lib.load_tensors(lib.path / bank, name, prefix)
    state.update({f"adapters.{k[len(prefix):]}": v for k, v in adapters.items()})
    return state


def _architecture(lib: Library, path: str) -> tuple[int, bool]:
    """(reduction, scaled) of the bank at ``path``, from its config (a bank written before
    ``scaled`` existed is plain)."""
    f = lib.path / bank_config_path(path)
    cfg = checks.read_json(f, "an adapter bank config", "re-create the adapter experts or restore it")
    try:
        return (schema.integer(cfg.get("reduction", 2), f"{f}: reduction", 1, 256),
                schema.boolean(cfg.get("scaled", False), f"{f}: scaled"))
    except ConfigError as e:
        raise LibraryError(f"{e}; re-create the adapter experts") from None


def load_bank(lib: Library, bank: str, verify: bool) -> AdapterBank:
    """The whole bank as one :class:`AdapterBank`: its parent backbone (with upstream head) and the
    adapters of every adapter expert the manifest still names in it, keyed by node, in manifest
    order. Embedding many experts through it computes the shared stem once."""
    path = f"{ADAPTERS}/{check_name(bank)}.safetensors"
    members = [m for m in lib.members() if bank_of(m) == path]
    if not members:
        raise LibraryError(f"the library at {lib.path} has no adapter experts in bank {bank!r}; build them first "
                           "(expertise experts --kind adapter)")
    parents = {m.parent for m in members}
    if len(parents) != 1:
        raise LibraryError(f"bank {bank!r}: its experts name different backbones {sorted(map(str, parents))}; restore library.json")
    for m in members:
        if verify:
            lib.check_member(m.name)
        lib.check_loadable(m.name)
    parent = lib.load(str(members[0].parent), verify=verify)
    if not isinstance(parent, ExpertModel):
        raise LibraryError(f"bank {bank!r}: its backbone {members[0].parent!r} is not an ExpertModel; re-create the adapter experts")
    nodes = [str(m.extra.get("node")) for m in members]
    model = AdapterBank(parent, nodes, *_architecture(lib, path))
    keys = {f"{expert_key(n)}." for n in nodes}
    state = {k: v for k, v in lib.load_tensors(lib.path / path, bank).items() if k[:k.find(".") + 1] in keys}
    try:
        model.adapters.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise LibraryError(f"bank {bank!r}: adapters do not match its config ({' '.join(first[:3])}); re-create the adapter experts") from None
    return model.eval()


def _referenced(lib: Library) -> set[str]:
    return {f for m in lib.members() for f in m.files if BANK_FILE.fullmatch(f)}


def prune(lib: Library) -> None:
    """Delete bank files no manifest entry names any more (after the manifest commit, under the
    lock): the last adapter expert of a bank takes the bank with it."""
    adapters_dir = lib.path / ADAPTERS
    if not adapters_dir.is_dir():
        return
    referenced = _referenced(lib)
    for f in adapters_dir.iterdir():
        if f.is_file() and BANK_FILE.fullmatch(f"{ADAPTERS}/{f.name}") and f"{ADAPTERS}/{f.name}" not in referenced:
            f.unlink(missing_ok=True)


def stray_files(lib: Library) -> list[str]:
    """Files under adapters/ that no adapter expert names (verify's report)."""
    adapters_dir = lib.path / ADAPTERS
    if not adapters_dir.is_dir():
        return []
    referenced = _referenced(lib)
    return [f"{f} is not part of any adapter expert in the manifest; delete it or re-add the adapter experts"
            for f in sorted(adapters_dir.iterdir())
            if not f.name.startswith(".") and f"{ADAPTERS}/{f.name}" not in referenced]


@dataclass
class PreparedBank:
    """What :func:`add_bank` writes, checked before the disk is touched: each expert's completed
    MemberInfo (without ``files``), config and label prior by member name, the adapters' tensors,
    the bank's shape and the backbone's tensors the bank was trained on."""

    name: str
    parent: str
    members: dict[str, tuple[MemberInfo, dict[str, Any], torch.Tensor | None]]
    adapter_state: dict[str, torch.Tensor]
    bank_config: dict[str, Any]
    base_state: dict[str, torch.Tensor]

    @property
    def path(self) -> str:
        return f"{ADAPTERS}/{self.name}.safetensors"


def prepare_bank(lib: Library, bank: AdapterBank, parent: str, members: Mapping[str, MemberInfo],
                 label_priors: Mapping[str, torch.Tensor] | None = None, bank_name: str = "bank") -> PreparedBank:
    """The checks of :func:`add_bank` that need no lock, and what it will write."""
    check_name(bank_name)
    if not members:
        raise LibraryError("add_adapter_bank needs at least one member; pass {expert: MemberInfo}")
    unknown = [e for e in members if e not in bank.experts]
    if unknown:
        raise LibraryError(f"adapter experts {unknown} are not in the bank, which holds {bank.experts}")
    priors = dict(label_priors or {})
    adapter_state = {k: v.detach().to("cpu").clone().contiguous() for k, v in bank.adapter_state_dict().items()}
    bank_state = {k: v.detach().to("cpu") for k, v in bank.base.state_dict().items()}
    prepared: dict[str, tuple[MemberInfo, dict[str, Any], torch.Tensor | None]] = {}
    for expert, info in members.items():
        name = check_name(info.name)
        if info.kind != "adapter_expert":
            raise LibraryError(f"member {name!r}: an expert of an adapter bank has kind 'adapter_expert', got {info.kind!r}")
        if info.parent not in (None, parent):
            raise LibraryError(f"member {name!r}: its parent is the bank's backbone {parent!r}, not {info.parent!r}")
        model = bank.expert(expert)
        config = model.member_config()
        shapes = {**bank_state, **{f"adapters.{k}": v for k, v in model.adapters.state_dict().items()}}
        checks.match_shapes(name, checks.expected_shapes(config, lib.path / f"member {name!r}: member_config()"),
                            {k: tuple(v.shape) for k, v in shapes.items()})
        info = replace(complete_info(info, model, lib.hierarchy), parent=parent, extra={**info.extra, "node": expert})
        prepared[name] = (info, config, check_prior(name, priors.get(expert), lib.hierarchy))
    if len(prepared) != len(members):
        raise LibraryError(f"adapter experts must have distinct names, got {[i.name for i in members.values()]}")
    return PreparedBank(bank_name, parent, prepared, adapter_state, bank.bank_config(), bank_state)


def write_bank(prep: PreparedBank, bank_dir: Path, member_dirs: Mapping[str, Path], parent_hash: str) -> dict[str, MemberInfo]:
    """The bank's files written into the new folder ``bank_dir`` and each expert's (config, label
    prior) into its new folder of ``member_dirs``; returns the experts' MemberInfos with their files."""
    bank_dir.mkdir(parents=True)
    atomic_save_safetensors(bank_dir / f"{prep.name}.safetensors", prep.adapter_state,
                            metadata={"format": "pt", "bank": prep.name, "parent": prep.parent})
    atomic_write_json(bank_dir / f"{prep.name}.json", {**prep.bank_config, "parent": prep.parent, "parent_hash": parent_hash})
    bank_files = {f"{ADAPTERS}/{f.name}": sha256_file(f) for f in sorted(bank_dir.iterdir())}
    infos: dict[str, MemberInfo] = {}
    for name, (info, config, prior) in prep.members.items():
        member_dirs[name].mkdir(parents=True)
        atomic_write_json(member_dirs[name] / CONFIG, config)
        if prior is not None:
            atomic_save_safetensors(member_dirs[name] / PRIOR, {"prior": prior}, metadata={"member": name})
        files = {f.name: sha256_file(f) for f in sorted(member_dirs[name].iterdir())}
        extra = {**info.extra, "bank": prep.path, "bank_config": bank_config_path(prep.path), "parent_hash": parent_hash}
        infos[name] = replace(info, files={**files, **bank_files}, extra=extra)
    return infos


def check_target(lib: Library, names: Sequence[str], bank_name: str, parent: str, overwrite: bool) -> list[str]:
    """Under the lock: where a bank ``bank_name`` of experts ``names`` on ``parent`` may go (a
    backbone stored whole; no other bank or member of those names unless ``overwrite``). Returns
    the members of the bank it replaces."""
    if bank_of(lib.info(parent)) is not None:
        raise LibraryError(f"the backbone {parent!r} of a bank must be a member stored whole, not an adapter expert")
    bank_path = f"{ADAPTERS}/{bank_name}.safetensors"
    old = [n for n, m in lib.entries().items() if bank_of(m) == bank_path]
    if (old or (lib.path / bank_path).exists()) and not overwrite:
        raise LibraryError(f"the library already has an adapter bank {bank_name!r}; replace it and its experts with overwrite=True, or pick another bank name")
    taken = [n for n in names if n in lib and n not in old]
    if taken and not overwrite:
        raise LibraryError(f"the library already has members {taken}; remove them first or pick other names")
    if parent in names:
        raise LibraryError(f"an adapter expert cannot replace its own backbone {parent!r}; pick another name")
    return old


def commit_bank(lib: Library, infos: Mapping[str, MemberInfo], bank_dir: Path, member_dirs: Mapping[str, Path],
                old: Sequence[str]) -> None:
    """Under the lock: swap the written bank files and expert folders in, replacing the bank's
    ``old`` experts, in one :class:`Transaction` that the manifest rewrite commits."""
    adapters_dir, members_dir = lib.path / ADAPTERS, lib.path / MEMBERS
    manifest: dict[str, MemberInfo] = {}
    for n, m in lib.entries().items():
        if n in infos:
            manifest[n] = infos[n]  # a replaced member keeps its place
        elif n not in old:
            manifest[n] = m
    manifest.update({n: i for n, i in infos.items() if n not in manifest})
    adapters_dir.mkdir(exist_ok=True)
    with Transaction() as tx:
        for f in sorted(bank_dir.iterdir()):
            tx.put(f, adapters_dir / f.name)
        for n in sorted(set(old) - set(member_dirs)):
            tx.remove(members_dir / n)
        for n, d in member_dirs.items():
            tx.put(d, members_dir / n)
        tx.commit(lambda: lib.write_manifest(manifest))


def add_bank(lib: Library, bank: AdapterBank, parent: str, members: Mapping[str, MemberInfo],
             label_priors: Mapping[str, torch.Tensor] | None = None, bank_name: str = "bank",
             overwrite: bool = False) -> list[MemberInfo]:
    """Store a trained :class:`AdapterBank` once, as ``adapters/<bank_name>.safetensors`` and
    ``.json``, and one ``adapter_expert`` member per entry of ``members`` (bank expert -> its
    MemberInfo; its ``parent`` is set to ``parent``). Returns the stored MemberInfos.

    ``parent`` must be a stored ExpertModel whose weights are exactly ``bank.base``'s: the bank
    is stored beside it and refers to it, never copying it. With ``overwrite`` an existing bank
    of that name is replaced together with all its members. The new files are staged and swapped
    in by one :class:`Transaction`, which the manifest rewrite commits; on error nothing changes.
    """
    prep = prepare_bank(lib, bank, parent, members, label_priors, bank_name)
    with lib.writing():
        pinfo = lib.info(parent)
        if bank_of(pinfo) is not None:
            raise LibraryError(f"the backbone {parent!r} of a bank must be a member stored whole, not an adapter expert")
        lib.check_member(parent)
        stored = lib.load_tensors(lib.member_dir(parent) / WEIGHTS, parent)
        if stored.keys() != prep.base_state.keys() or any(not torch.equal(stored[k], prep.base_state[k]) for k in stored):
            raise LibraryError(
                f"the bank's backbone is not the stored {parent!r}: train the bank on library.load({parent!r}) "
                "(the backbone and head stay frozen while adapters train)"
            )
        old = check_target(lib, list(prep.members), bank_name, parent, overwrite)
        tag = uuid.uuid4().hex[:8]
        staged_bank = lib.path / ADAPTERS / f"{STAGING}{bank_name}-{tag}"
        staged = {n: lib.path / MEMBERS / f"{STAGING}{n}-{tag}" for n in prep.members}
        try:
            infos = write_bank(prep, staged_bank, staged, files_digest(pinfo.files))
            commit_bank(lib, infos, staged_bank, staged, old)
        finally:
            shutil.rmtree(staged_bank, ignore_errors=True)
            for d in staged.values():
                shutil.rmtree(d, ignore_errors=True)
        prune(lib)
    return [infos[n] for n in prep.members]
