"""Commands on a library itself: add external models, list members, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from expertise.cli.common import (LibOpt, open_library, err, library_app, out,
                                  pool_app, user_errors)


@pool_app.command("add")
@user_errors
def pool_add(
    library: LibOpt,
    timm_name: Annotated[Optional[str], typer.Option("--timm", help="timm architecture, e.g. resnet50 (see timm.list_models()).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Weights for --timm: a .safetensors state dict.")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="timm's own pretrained weights for --timm (needs a network or a warm cache).")] = False,
    hf: Annotated[Optional[str], typer.Option("--hf", help="A Hugging Face timm model: a downloaded folder (config.json + model.safetensors) or a Hub id.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Member name (default ext.<architecture>).")] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Input size in pixels (default: the weights' own).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a member of the same name.")] = False,
) -> None:
    """Register an external pre-trained model as a pool member of LIBRARY (created if missing).
    Weights are read from safetensors only; pickled checkpoints are refused."""
    from expertise.library import Library
    from expertise.pool import add_external, load_external

    model, source = load_external(timm_name, checkpoint, hf, pretrained, size)
    lib = Library.create(library, None, exist_ok=True)
    info = add_external(lib, model, source, name, overwrite)
    head = info.extra["upstream_classes"]
    out.print(f"[green]added[/] {info.name}: {info.architecture} from {source.location}, {info.parameters:,} parameters, "
              f"embedding {info.embedding_dim}, input {info.preprocessing['size']} px, "
              + (f"upstream head of {head} classes" if head else "no upstream head"), highlight=False, soft_wrap=True)


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
        out.print(f"removed {f}, left over from an interrupted write", highlight=False)
    problems = lib.verify()
    if problems:
        for p in problems:
            err.print(f"[red]✗[/] {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"[green]✓[/] {library}: {len(lib)} members, every one loadable and every file matching its hash")
