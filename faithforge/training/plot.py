"""A PNG of a DPO run: loss, reward margin and reward accuracy per step."""

from __future__ import annotations

from pathlib import Path


def plot_training(history: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("loss", "margin", "accuracy"), ("DPO loss", "reward margin", "reward accuracy")):
        ax.plot(steps, [h.get(key) for h in history], linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].axhline(0.6931, color="grey", linestyle="--", linewidth=0.8)  # ln 2: policy == reference
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
