"""The episode being recorded: start it, then end it one way (save, discard, abort) and report the outcome.

An episode only becomes part of the store when saved (EpisodeStore commits atomically); every way of ending
one appends an EpisodeOutcome to the session's result and logs one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from robopolicy.collect.records import EpisodeOutcome, SessionResult, _Episode


class EpisodeBook:
    """At most one open episode of `store`, and the outcomes of the ended ones (in `result`).

    Args:
        store: an EpisodeStore open for writing.
        result: the session's summary; each ended episode is appended to ``result.episodes``.
        on_abort: what :meth:`abort` does with the open episode: save | discard.
        sim_success: the scene's own success check (None without one), stored as ``sim_success``.
        log: where progress lines go.
    """

    def __init__(self, store, result: SessionResult, on_abort: str, sim_success: Callable[[], bool | None],
                 log: Callable[[str], None]) -> None:
        self.store, self.result, self.on_abort = store, result, on_abort
        self.sim_success, self.log = sim_success, log
        self.current: _Episode | None = None

    def start(self, attrs: dict[str, Any], t: float, cameras: Sequence[str], seed: int | None,
              language: str) -> None:
        """Open a new episode with `attrs` at session time `t`."""
        # on_exit="discard": a recorder left open by a crash must never leave a half episode in the store
        rec = self.store.recorder(attrs, on_exit="discard")
        self.current = _Episode(rec, t, cameras, seed, language)
        self.log(f"recording episode {self.store.n_episodes} (seed {seed}): {language}")

    def save(self, success: bool | None, reason: str) -> bool:
        """Save the open episode (an empty one is discarded instead); False when none was open."""
        ep, self.current = self.current, None
        if ep is None:
            return False
        if ep.n_steps == 0:
            ep.rec.discard()
            self._outcome(ep, "discarded", None, success, False, reason + " (no steps recorded)")
        else:
            extra = {"success": success, "aborted": False, "end_reason": reason,
                     "sim_success": self.sim_success(), **ep.stats()}
            index = ep.rec.save(**extra)
            self._outcome(ep, "saved", index, success, False, reason)
        return True

    def discard(self, reason: str) -> bool:
        """Drop the open episode; False when none was open."""
        ep, self.current = self.current, None
        if ep is None:
            return False
        ep.rec.discard()
        self._outcome(ep, "discarded", None, None, False, reason)
        return True

    def abort(self, reason: str) -> None:
        """End the open episode because the session is being cut short (`on_abort` decides).

        A failing save falls back to a discard and a failing discard is only logged: the error that is
        ending the session must not also cost the episodes saved before.
        """
        ep, self.current = self.current, None
        if ep is None:
            return
        if self.on_abort == "save" and ep.n_steps > 0:
            try:
                index = ep.rec.save(success=False, aborted=True, end_reason=reason,
                                    sim_success=self.sim_success(), **ep.stats())
                self._outcome(ep, "saved", index, False, True, reason)
                return
            except Exception as e:
                self.log(f"warning: saving the aborted episode failed ({e}); discarding it")
        try:
            ep.rec.discard()
        except Exception as e:
            self.log(f"warning: discarding the aborted episode failed ({e}); the store keeps its saved episodes")
        self._outcome(ep, "discarded", None, None, True, reason)

    def _outcome(self, ep: _Episode, outcome: str, index: int | None, success, aborted: bool,
                 reason: str) -> EpisodeOutcome:
        st = ep.stats()
        o = EpisodeOutcome(outcome=outcome, index=index, success=success, aborted=aborted, n_steps=ep.n_steps,
                           duration_s=st["duration_s"], achieved_hz=st["achieved_hz"],
                           dropped_frames=st["dropped_frames"], reason=reason, seed=ep.seed, language=ep.language)
        self.result.episodes.append(o)
        drops = ", ".join(f"{k} {v}" for k, v in o.dropped_frames.items()) or "no cameras"
        where = f"saved as episode {index}" if outcome == "saved" else "discarded"
        self.log(f"episode {where}: {reason}; success={success} aborted={aborted} {o.n_steps} steps "
                 f"{o.duration_s:.1f} s at {o.achieved_hz:.2f} Hz; dropped frames: {drops}")
        return o
