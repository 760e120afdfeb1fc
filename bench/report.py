"""Writing BENCHMARKS.md: each benchmark replaces its own section and leaves the others (the
soak, fuzz and load figures are not re-run by `make bench` and must not be lost by it)."""

from __future__ import annotations

from pathlib import Path

HEADER = """# Benchmarks

Figures are medians (and p99) from one run on a shared, noisy machine: compare ratios,
not absolute numbers across machines. `make bench` rewrites the sections it measures and
keeps the others; what the figures mean, which targets are missed, by how much and why:
`docs/performance.md`.
"""


def write_section(path: Path, text: str) -> None:
    """Put ``text`` (one section, starting with its ``## `` title line) into ``path``: in
    place of the section with the same title, or at the end."""
    title = text.lstrip().splitlines()[0]
    assert title.startswith("## "), "a section starts with its ## title"
    old = path.read_text(encoding="utf-8") if path.exists() else HEADER
    sections = old.split("\n## ")
    head, rest = sections[0], ["## " + s for s in sections[1:]]
    body = text.strip() + "\n"
    for i, section in enumerate(rest):
        if section.splitlines()[0] == title:
            rest[i] = body
            break
    else:
        rest.append(body)
    path.write_text("\n".join([head.rstrip() + "\n", *(s.rstrip() + "\n" for s in rest)]), encoding="utf-8")


def emit(text: str, path: Path | None) -> None:
    """A benchmark's report: printed, and written into ``path`` (its section) when given."""
    print(text)
    if path is not None:
        write_section(path, text)


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank, from below): the benchmarks' p50 / p99."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]
