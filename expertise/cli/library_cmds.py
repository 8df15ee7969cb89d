"""Commands on a library itself: add external models (one, or a pool file), export them as a pool file,
list members, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from expertise.cli.common import (records_app, LibOpt, open_library, err, library_app, out,
                                  pool_app, user_errors)
from expertise.library import staging


@pool_app.command("add")
@user_errors
def pool_add(
    library: LibOpt,
    pool_file: Annotated[Optional[Path], typer.Option("--from", help="A pool file (TOML, one [[member]] per model; see docs/pools.md): add every member it lists, skipping those already added.")] = None,
    timm_name: Annotated[Optional[str], typer.Option("--timm", help="timm architecture, e.g. resnet50 (see timm.list_models()).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Weights for --timm: a .safetensors state dict.")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="timm's own pretrained weights for --timm (needs a network or a warm cache).")] = False,
    hf: Annotated[Optional[str], typer.Option("--hf", help="A Hugging Face model, timm or transformers: a folder (config.json + model.safetensors) or a Hub id (read from the local Hugging Face cache; fetched only when online).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Member name (default ext.<architecture>, or ext.<folder or repository name> for transformers).")] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Input size in pixels (default: the weights' own).")] = None,
    upstream_dataset: Annotated[Optional[str], typer.Option("--upstream-dataset", help="Name of the data it was trained on, e.g. imagenet-21k.")] = None,
    upstream_images: Annotated[int, typer.Option("--upstream-images", help="Images in that data (task_agnostic's second key).")] = 0,
    imagenet_top1: Annotated[Optional[float], typer.Option("--imagenet-top1", help="ImageNet top-1 accuracy in percent, e.g. 80.4 (task_agnostic ranks by it).")] = None,
    notes: Annotated[Optional[str], typer.Option("--notes", help="Free text kept with the member.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a member of the same name (with --from: every member the file names).")] = False,
) -> None:
    """Register external pre-trained models as pool members of LIBRARY (created if missing): one
    model from --timm/--checkpoint/--pretrained or --hf, or every model of a pool file (--from).
    Weights are read from safetensors only; pickled checkpoints are refused."""
    from expertise.library import Library
    from expertise.pool import PoolMetadata, add_external, load_external

    if pool_file is not None:
        if any(v is not None for v in (timm_name, checkpoint, hf, name, size, upstream_dataset, imagenet_top1, notes)) \
                or pretrained or upstream_images:
            from expertise.errors import ConfigError

            raise ConfigError("--from reads every model and its metadata from the pool file; pass no other model options")
        _add_pool_file(library, pool_file, overwrite)
        return
    meta = PoolMetadata.checked("pool add", upstream_dataset=upstream_dataset, upstream_images=upstream_images,
                                imagenet_top1=imagenet_top1, notes=notes)
    model, source = load_external(timm_name, checkpoint, hf, pretrained, size)
    lib = Library.create(library, None, exist_ok=True)
    info = add_external(lib, model, source, name, overwrite, meta)
    out.print(f"[green]added[/] {_describe(info)}", highlight=False, soft_wrap=True)


def _describe(info) -> str:
    head = info.extra.get("upstream_classes", 0)
    return (f"{info.name}: {info.architecture} from {info.extra.get('location')}, {info.parameters:,} parameters, "
            f"embedding {info.embedding_dim}, input {info.preprocessing['size']} px, "
            + (f"upstream head of {head} classes" if head else "no upstream head"))


def _add_pool_file(library: Path, pool_file: Path, overwrite: bool) -> None:
    from expertise.pool_file import Outcome, add_from_file

    def report(o: Outcome) -> None:
        if o.added:
            out.print(f"[green]added[/] {_describe(o.info)}", highlight=False, soft_wrap=True)
        else:
            out.print(f"[dim]present[/] {o.info.name}: already in the library from {o.entry.describe()}, skipped",
                      highlight=False, soft_wrap=True)

    outcomes = add_from_file(library, pool_file, overwrite, report)
    added = sum(o.added for o in outcomes)
    out.print(f"{pool_file}: {added} added, {len(outcomes) - added} already present; {library} has "
              f"{len(open_library(library))} member(s)", highlight=False, soft_wrap=True)


@pool_app.command("export")
@user_errors
def pool_export(
    library: LibOpt,
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the pool file here (default: print it).")] = None,
) -> None:
    """Write the external members of LIBRARY as a pool file (their sources, input sizes and
    metadata), which 'pool add --from' reads back into another library."""
    from expertise.io import atomic_write_text
    from expertise.pool_file import export

    text, left = export(open_library(library))
    if out_file is None:
        print(text, end="")
        return
    atomic_write_text(out_file, text)
    members = text.count("[[member]]")
    err.print(f"wrote {out_file}: {members} member(s)" + (f"; {left} built member(s) of the library left out" if left else ""),
              highlight=False, soft_wrap=True)


@library_app.command("ls")
@user_errors
def library_ls(library: Annotated[Path, typer.Argument(help="Library folder.")]) -> None:
    """List the members of a library: kind, expert domain, upstream images, parameters, embedding
    dimension and upstream holdout accuracy."""
    lib = open_library(library)
    table = Table(title=f"{library} ({len(lib)} members)")
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("domain", overflow="fold")
    for col in ("images", "params", "dim", "acc"):
        table.add_column(col, justify="right")
    for m in lib.members():
        acc = "" if m.upstream_accuracy is None else f"{m.upstream_accuracy:.3f}"
        table.add_row(m.name, m.kind, m.domain or "", f"{m.upstream_images:,}", f"{m.parameters:,}", str(m.embedding_dim), acc)
    out.print(table)


@library_app.command("verify")
@user_errors
def library_verify(library: Annotated[Path, typer.Argument(help="Library folder.")]) -> None:
    """Check that every member is loadable: each file present, inside the library and matching its
    sha256; each config within its schema and building exactly the tensors stored; the hierarchy and
    upstream settings intact. Removes what interrupted writes left behind when no writer holds the
    library. Exit 1 if anything is wrong."""
    lib = open_library(library)
    for f in lib.clean():
        out.print(f"removed {f}, left over from an interrupted write", highlight=False, soft_wrap=True)
    problems = lib.verify()
    from expertise.select.embed import EmbeddingCache

    entries, untagged = EmbeddingCache(lib.path / "cache").audit()
    if untagged:
        out.print(f"{len(untagged)} of {entries} cached embeddings in {lib.path / 'cache'} have no valid tag (copied "
                  "from elsewhere, edited or truncated): they are never read, and a selection embeds those members "
                  "again; delete them to drop them", highlight=False, soft_wrap=True)
    waiting = staging.pending(library)
    for folder, what in waiting:
        out.print(f"staged, not in the library: {folder} ({what})", highlight=False, soft_wrap=True)
    if waiting:
        out.print("The next `expertise experts` (or `upstream`) run with the same settings commits finished "
                  "units and retries the rest; delete a folder to drop it.", highlight=False, soft_wrap=True)
    if problems:
        for p in problems:
            err.print(f"[red]✗[/] {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"[green]✓[/] {library}: {len(lib)} members, every one loadable and every file matching its hash")


@records_app.command("trust")
@user_errors
def records_trust(folder: Annotated[Path, typer.Argument(help="An output folder (its units/ holds the records).")]) -> None:
    """Accept the unit records of FOLDER (a benchmark or demo folder from another machine, or from an
    older expertise): each one whose form checks (plain JSON within bounds, filed under the name its
    kind and config give, accuracies that are fractions) is tagged with this installation's key, so
    later runs read it instead of computing its unit again. Records are believed only after this:
    run it only on a folder whose origin you trust."""
    from expertise.store import RecordStore

    if not (folder / "units").is_dir():
        from expertise.errors import ConfigError

        raise ConfigError(f"{folder} has no units/ folder of records; give an output folder of expertise demo, bench, "
                          "transfer or dat")
    done, refused = RecordStore(folder).trust()
    for line in refused:
        err.print(f"[red]✗[/] {line}", highlight=False, soft_wrap=True)
    out.print(f"trusted {done} record(s) of {folder}" + (f"; {len(refused)} refused" if refused else ""), highlight=False)
    if refused:
        raise typer.Exit(1)
