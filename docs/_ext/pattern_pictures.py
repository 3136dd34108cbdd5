"""The pattern pictures of the docs, drawn from attnref's own rules.

Every picture is computed by :class:`attnref.patterns.Pattern` (``dense`` for the
multi-head ops, ``allows`` for the pooling ops, exactly as the reference calls
it), by the reference ops themselves (sinks, packed sequences, merged states:
the weights come out of the op) or by the validation that backends share (the
page table), never by a rule restated here, so a picture cannot disagree with
the code.
Rows are queries (or batches, or target steps), columns are keys (or positions,
or source steps); a filled cell is an allowed pair.

``generate(folder)`` writes one PNG per entry of :data:`PICTURES`, named
``<name>.png``; names start with the op they illustrate.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnref import reference
from attnref.patterns import Pattern, align_offset
from attnref.validation import check_paged

ALLOWED = "#2f6db5"
DISALLOWED = "#eceff3"
MARK = "#f2a900"
CELL_INCHES = 0.34


@dataclass(frozen=True)
class Grid:
    """What one picture shows: a boolean grid plus labels and optional marks."""

    allowed: np.ndarray  # bool (rows, cols)
    title: str
    row_label: str
    col_label: str
    row_ticks: list[str]
    marks: np.ndarray | None = None  # x position of the row's aligned position/centre (NaN = none)
    shade: np.ndarray | None = None  # values in [0, 1] for allowed cells (local-p's Gaussian)
    text: np.ndarray | None = None  # a short label per cell ("" = none)
    col_ticks: list[str] | None = None  # default: 0, 1, 2, ...


def _multihead(pattern: Pattern, q_len: int, kv_len: int, align: str, title: str) -> Grid:
    offset = int(align_offset(align, q_len, kv_len))
    rows = np.arange(q_len)
    marks = (rows + offset).astype(float)
    marks[(marks < 0) | (marks >= kv_len)] = np.nan  # the aligned position lies outside the keys
    return Grid(
        allowed=pattern.dense(q_len, kv_len, align),
        title=f"{title}\nLq={q_len}, Lk={kv_len}, align={align!r}",
        row_label="query i  (aligned position p)",
        col_label="key j",
        row_ticks=[f"{i}  (p={i + offset})" for i in rows],
        marks=marks,
    )


def _additive(window: tuple[int, int] | None, length: int, centers: list[int]) -> Grid:
    positions = np.arange(length)[None, :]
    c = np.asarray(centers)[:, None]
    if window is None:
        allowed = np.ones((len(centers), length), dtype=bool)
        return Grid(
            allowed, f"global attention pooling\nL={length}", "batch b", "position i", [str(b) for b in range(len(c))]
        )
    allowed = np.asarray(Pattern.window(*window).allows(c, positions))  # as additive_attention calls it
    return Grid(
        allowed=allowed,
        title=f"local attention pooling, window={window}\nL={length}, center per batch",
        row_label="batch b  (centre c)",
        col_label="position i",
        row_ticks=[f"{b}  (c={cb})" for b, cb in enumerate(centers)],
        marks=np.asarray(centers, dtype=float),
    )


def _luong_local_m(target_len: int, source_len: int, half_width: int) -> Grid:
    t = np.arange(target_len)[:, None]
    s = np.arange(source_len)[None, :]
    p_t = np.minimum(t, source_len - 1)  # local-m: p_t = min(t, S_b - 1)
    allowed = np.asarray(Pattern.window(half_width, half_width).allows(p_t, s))
    return Grid(
        allowed=allowed,
        title=f"Luong local-m, D={half_width}\nT={target_len}, S={source_len}",
        row_label="target step t  (p_t)",
        col_label="source position s",
        row_ticks=[f"{i}  (p={int(p)})" for i, p in enumerate(p_t[:, 0])],
        marks=p_t[:, 0].astype(float),
    )


def _luong_local_p(p_t: list[float], source_len: int, half_width: int) -> Grid:
    p = np.asarray(p_t)[:, None]
    s = np.arange(source_len)[None, :]
    allowed = np.asarray(Pattern.window(half_width, half_width).allows(p, s))  # |s - p_t| <= D, real p_t
    sigma = half_width / 2
    gauss = np.exp(-((s - p) ** 2) / (2 * sigma**2))
    return Grid(
        allowed=allowed,
        title=f"Luong local-p, D={half_width} (shade: Gaussian factor)\nS={source_len}, example p_t per step",
        row_label="target step t  (p_t)",
        col_label="source position s",
        row_ticks=[f"{i}  (p={v:.1f})" for i, v in enumerate(p_t)],
        marks=p[:, 0],
        shade=np.where(allowed, gauss, 0.0),
    )


def _sinks(window: tuple[int, int], length: int, sink: float) -> Grid:
    """The weights of a causal window with a sink, from the reference: ``q = k = 0`` (every score 0)."""
    q = np.zeros((1, 1, length, 1))
    _, lse, weights = reference.local_attention(
        q, q, q, window=window, sinks=np.array([sink]), return_lse=True, return_weights=True
    )
    to_sink = np.exp(sink - lse[0, 0])[:, None]  # the probability the sink takes from each row
    shown = np.concatenate([to_sink, weights[0, 0]], axis=1)
    return Grid(
        allowed=shown > 0,
        title=f"local_attention(window={window}, sinks=[{sink:g}]), every score 0\nshade and label: weight",
        row_label="query i",
        col_label="sink, then key j",
        row_ticks=[str(i) for i in range(length)],
        shade=shown,
        text=np.where(shown > 0, np.char.mod("%.2f", shown).astype(object), ""),
        col_ticks=["sink", *(str(j) for j in range(length))],
    )


def _packed(q_lens: list[int], k_lens: list[int]) -> Grid:
    """The allowed pairs of a packed causal batch, from the reference: ``q = k = 0`` and one-hot
    values, so that output ``(t, j)`` is the weight of packed key ``j`` for packed query ``t``."""
    cu_q, cu_k = np.cumsum([0, *q_lens]), np.cumsum([0, *k_lens])
    q, k = np.zeros((int(cu_q[-1]), 1, 1)), np.zeros((int(cu_k[-1]), 1, 1))
    v = np.eye(int(cu_k[-1]))[:, None, :]
    weights = reference.global_attention(q, k, v, causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)[:, 0]
    sequence = np.repeat(np.arange(len(q_lens)), q_lens)
    return Grid(
        allowed=weights > 0,
        title=f"packed causal attention (bottom_right per sequence)\ncu_seqlens_q={cu_q.tolist()}, "
        f"cu_seqlens_k={cu_k.tolist()}",
        row_label="packed query t  (sequence b)",
        col_label="packed key",
        row_ticks=[f"{t}  (b={b})" for t, b in enumerate(sequence)],
    )


def _page_table(table: list[list[int]], seqlens: list[int], block_size: int, num_blocks: int) -> Grid:
    """Where each key of each sequence lives: ``block:slot`` from the shared validation."""
    q = np.zeros((len(table), 1, 1, 1))
    cache = np.zeros((num_blocks, block_size, 1, 1))
    args = check_paged(q, cache, cache, block_table=np.array(table), cache_seqlens=np.array(seqlens))
    width = len(table[0]) * block_size
    text = np.full((len(table), width), "", dtype=object)
    for b in range(len(table)):
        blocks, slots = args.key_slots(b)
        for t, (blk, slot) in enumerate(zip(blocks, slots, strict=True)):
            text[b, t] = f"{blk}:{slot}"
    return Grid(
        allowed=text != "",
        title=f"block_table={table}, cache_seqlens={seqlens}, block_size={block_size}\nlabel: block:slot of key t",
        row_label="sequence b",
        col_label="key position t",
        row_ticks=[str(b) for b in range(len(table))],
        text=text,
    )


def _split(length: int, parts: list[int]) -> Grid:
    """A causal attention's keys split into parts (split-KV): each allowed cell labelled with its part."""
    allowed = Pattern.full(causal=True).dense(length, length)
    owner = np.asarray(parts)[None, :].repeat(length, axis=0)
    return Grid(
        allowed=allowed,
        title=f"causal attention, keys split into {max(parts) + 1} parts\nlabel: the part that scores the key",
        row_label="query i",
        col_label="key j",
        row_ticks=[str(i) for i in range(length)],
        text=np.where(allowed, owner.astype(str).astype(object), ""),
    )


# name -> how to compute it. The names are referenced from the op pages.
PICTURES: dict[str, Callable[[], Grid]] = {
    "global_attention-global": lambda: _multihead(Pattern.full(), 4, 6, "bottom_right", "global"),
    "global_attention-causal-bottom_right": lambda: _multihead(
        Pattern.full(causal=True), 3, 5, "bottom_right", "causal"
    ),
    "global_attention-causal-top_left": lambda: _multihead(Pattern.full(causal=True), 3, 5, "top_left", "causal"),
    "global_attention-causal-bottom_right-lq-gt-lk": lambda: _multihead(
        Pattern.full(causal=True), 5, 3, "bottom_right", "causal"
    ),
    "global_attention-causal-top_left-lq-gt-lk": lambda: _multihead(
        Pattern.full(causal=True), 5, 3, "top_left", "causal"
    ),
    "local_attention-window-2-1": lambda: _multihead(Pattern.window(2, 1), 10, 10, "bottom_right", "window=(2, 1)"),
    "local_attention-window-3-0": lambda: _multihead(
        Pattern.window(3, 0), 10, 10, "bottom_right", "window=(3, 0): causal, 4 keys"
    ),
    "local_attention-window-2-1-bottom_right": lambda: _multihead(
        Pattern.window(2, 1), 4, 9, "bottom_right", "window=(2, 1)"
    ),
    "local_attention-window-2-1-top_left": lambda: _multihead(Pattern.window(2, 1), 4, 9, "top_left", "window=(2, 1)"),
    "chunked_attention-chunk-4": lambda: _multihead(Pattern.chunk(4), 12, 12, "bottom_right", "chunk_size=4"),
    "chunked_attention-chunk-4-causal": lambda: _multihead(
        Pattern.chunk(4, causal=True), 12, 12, "bottom_right", "chunk_size=4, causal=True"
    ),
    "chunked_attention-chunk-4-bottom_right": lambda: _multihead(
        Pattern.chunk(4, causal=True), 6, 10, "bottom_right", "chunk_size=4, causal=True"
    ),
    "additive_attention-global": lambda: _additive(None, 11, [5, 5, 5]),
    "additive_attention-window-2-2": lambda: _additive((2, 2), 11, [5, 1, 9]),
    "luong_attention-local-m": lambda: _luong_local_m(10, 8, 2),
    "luong_attention-local-p": lambda: _luong_local_p([0.4, 1.7, 2.5, 4.0, 5.2, 6.8, 7.6], 9, 2),
    "global_attention_vjp-causal": lambda: _multihead(
        Pattern.full(causal=True), 6, 6, "bottom_right", "causal: dS (and every gradient term) is 0 outside"
    ),
    "local_attention_vjp-window-2-1": lambda: _multihead(
        Pattern.window(2, 1), 8, 8, "bottom_right", "window=(2, 1): dS is 0 outside the band"
    ),
    "chunked_attention_vjp-chunk-3": lambda: _multihead(
        Pattern.chunk(3), 9, 9, "bottom_right", "chunk_size=3: dk, dv of a chunk come from its own rows"
    ),
    "sinks-window-2-0": lambda: _sinks((2, 0), 6, 0.0),
    "varlen-block-diagonal": lambda: _packed([3, 2, 4], [4, 2, 5]),
    "paged_attention-page-table": lambda: _page_table([[3, 0, 5], [3, 1, -1]], [7, 4], 3, 6),
    "merge_attention_states-split": lambda: _split(8, [0, 0, 0, 1, 1, 1, 2, 2]),
}


def draw(grid: Grid, path: Path) -> None:
    """Render ``grid`` to the PNG file ``path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap, ListedColormap

    rows, cols = grid.allowed.shape
    fig, ax = plt.subplots(figsize=(1.9 + CELL_INCHES * cols, 1.3 + CELL_INCHES * rows), dpi=110)
    try:
        if grid.shade is None:
            ax.imshow(grid.allowed, cmap=ListedColormap([DISALLOWED, ALLOWED]), vmin=0, vmax=1)
        else:
            ramp = LinearSegmentedColormap.from_list("gauss", [DISALLOWED, ALLOWED])
            ax.imshow(np.where(grid.allowed, 0.12 + 0.88 * grid.shade, 0.0), cmap=ramp, vmin=0, vmax=1)
        if grid.text is not None:
            for (y, x), label in np.ndenumerate(grid.text):
                if label:
                    dark = grid.allowed[y, x] and (grid.shade is None or grid.shade[y, x] > 0.45)
                    ax.text(x, y, label, ha="center", va="center", fontsize=5.5, color="white" if dark else "black")
        if grid.marks is not None:
            ys = np.arange(rows)[~np.isnan(grid.marks)]
            ax.scatter(grid.marks[~np.isnan(grid.marks)], ys, s=16, color=MARK, zorder=3, edgecolors="black", lw=0.4)
        ax.set_xticks(np.arange(cols), labels=grid.col_ticks)
        ax.set_yticks(np.arange(rows), labels=grid.row_ticks)
        ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=1.2)
        ax.tick_params(which="minor", length=0)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_label_position("top")
        ax.xaxis.tick_top()
        ax.set_xlabel(grid.col_label, fontsize=8)
        ax.set_ylabel(grid.row_label, fontsize=8)
        ax.set_title(grid.title, fontsize=8, pad=6, loc="left", y=-0.02 - 0.55 / max(rows, 1), va="top")
        fig.tight_layout()
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
        os.close(fd)
        fig.savefig(tmp, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.08)
        os.replace(tmp, path)
    finally:
        plt.close(fig)


def generate(folder: Path) -> list[Path]:
    """Draw every picture of :data:`PICTURES` into ``folder``; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in PICTURES.items():
        path = folder / f"{name}.png"
        draw(make(), path)
        paths.append(path)
    return paths
