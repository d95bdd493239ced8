"""The trigger engine (docs/semantics.md): evaluation of conditions and stateful
triggers, the index that finds the triggers an event can concern, and replay of a
history through them. Pure computation over :mod:`shared.contract`; the matcher and
the API's backtest drive it, each with its own I/O."""
