"""Errors raised by the data layer. Each message names the problem and how to fix it."""


class EpisodeValidationError(ValueError):
    """An episode (or a step of one) does not match the store's schema; nothing was written."""


class StoreFormatError(RuntimeError):
    """A store on disk is not a readable robopolicy EpisodeStore (missing arrays, wrong version, ...)."""
