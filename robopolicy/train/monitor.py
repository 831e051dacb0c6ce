"""Training logs: tensorboard scalars, a metrics.jsonl file, and a progress bar with loss and ETA.

Only the main process logs (the trainer passes `enabled=False` elsewhere).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class TrainMonitor:
    """Scalars to tensorboard (`<out>/tb`) and `<out>/metrics.jsonl`; a tqdm bar over the optimizer steps."""

    def __init__(self, out_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self.writer = None
        self._jsonl = None
        self.bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        out_dir.mkdir(parents=True, exist_ok=True)
        # purge_step drops events past the resume point written by an interrupted run.
        self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_step if start_step > 0 else None)
        self._jsonl = open(out_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not progress,
                        dynamic_ncols=True)
        self._t0 = time.perf_counter()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record scalars at `step` (names like 'train/loss', 'val/loss', 'eval/success_rate')."""
        if not self.enabled:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        record: dict[str, Any] = {"step": step, "time_s": round(time.perf_counter() - self._t0, 3), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def advance(self, n: int, loss: float | None = None, **postfix: Any) -> None:
        if not self.enabled:
            return
        shown = {"loss": f"{loss:.4f}"} if loss is not None else {}
        shown.update({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()})
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(n)

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text) if self.bar is not None and not self.bar.disable else print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.writer.flush()
        self.writer.close()
        self._jsonl.close()
