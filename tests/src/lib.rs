//! Cross-crate end-to-end tests for medrelay live in `tests/tests/`, one file per capability.
