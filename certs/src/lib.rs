//! Development certificate tooling.
