"""The store: the only place that knows SQL. Typed models, the engine, typed query functions
that take the caller's transaction (`common.Tx`), the phase state machines and the event log."""
