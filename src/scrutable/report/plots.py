"""The PNG figures of `scrutable report` (matplotlib, Agg): nothing here reads a sweep folder.

- `plot_alpha_tradeoff`: alpha vs perplexity (log axis, with the English-phrase reference
  as dashed lines) and alpha vs test metric, one line per prompt length, mean and standard
  deviation over seeds as error bars. Alpha uses a symlog axis so alpha = 0 sits on it.
- `plot_lengths`: prompt length vs several metrics (soft prompt vs its unembedded tokens).
- `plot_curves`: a metric over training steps, one line per trial, coloured by setting.

Files are byte-stable: the same inputs give the same PNG (no Software/date metadata).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METADATA = {"Software": None}  # no version string: the same data gives the same bytes


@dataclass(frozen=True)
class Point:
    x: float
    mean: float
    std: float  # 0 when a single seed


@dataclass(frozen=True)
class Curve:
    label: str  # the setting, e.g. "alpha=0.1, L=4"
    group: str  # trials sharing a group share a colour (the setting without the seed)
    steps: list[int]
    values: list[float]


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=METADATA)
    plt.close(fig)


def _errorbars(ax: plt.Axes, series: Mapping[str, Sequence[Point]]) -> None:
    for label, points in series.items():
        ax.errorbar(
            [p.x for p in points],
            [p.mean for p in points],
            yerr=[p.std for p in points],
            marker="o",
            capsize=3,
            label=label,
        )


def plot_alpha_tradeoff(
    path: Path,
    perplexity: Mapping[str, Sequence[Point]],
    metric: Mapping[str, Sequence[Point]],
    metric_name: str,
    references: Mapping[str, float],
    title: str,
) -> None:
    """Two panels sharing the alpha axis; series keyed by a label such as "L=4"."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _errorbars(left, perplexity)
    for i, (label, value) in enumerate(references.items()):
        left.axhline(value, linestyle="--", color=f"C{i}", alpha=0.6, label=f"English phrases, {label}")
    left.set_yscale("log")
    left.set_ylabel("perplexity of the prompt (log scale)")
    _errorbars(right, metric)
    right.set_ylabel(metric_name)
    nonzero = [p.x for points in perplexity.values() for p in points if p.x > 0]
    for ax in (left, right):
        ax.set_xscale("symlog", linthresh=min(nonzero) if nonzero else 1.0)
        ax.set_xlabel("alpha (symlog: 0 is the unconstrained baseline)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def plot_lengths(path: Path, panels: Mapping[str, Mapping[str, Sequence[Point]]], title: str) -> None:
    """One panel per metric; each panel maps series labels to points over prompt length."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items(), strict=True):
        _errorbars(ax, series)
        ax.set_xlabel("prompt length")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def plot_curves(path: Path, panels: Mapping[str, Sequence[Curve]], title: str) -> None:
    """One panel per metric, one line per trial; the colour names the setting."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels.items(), strict=True):
        colours: dict[str, str] = {}
        for curve in curves:
            first = curve.group not in colours
            colour = colours.setdefault(curve.group, f"C{len(colours) % 10}")
            ax.plot(
                curve.steps, curve.values, marker=".", color=colour, alpha=0.8, label=curve.group if first else None
            )
        ax.set_xlabel("training step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if colours:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)
