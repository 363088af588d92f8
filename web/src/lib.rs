//! The staff web client's Rust half: the SDK's sans-IO crypto and protocol logic compiled to
//! WebAssembly, behind a small engine the page drives. There is no second implementation of
//! any cryptography in JavaScript: identity and prekeys, PQXDH, the Double Ratchet, safety
//! numbers and the encrypted key store are all `medrelay-sdk`'s.
//!
//! | module | what |
//! |---|---|
//! | [`engine`] | [`engine::Engine`]: enrol, authenticate (origin-bound), log in, send with client-side fan-out, receive and ack, safety numbers, console requests; sans-IO |
//! | [`state`] | what the client remembers (conversations, history, unread counts), inside the sealed key store |
//! | [`requests`] | console requests from JSON through the protocol's validated types; answers to JSON |
//! | [`wire`] | key conversions and fan-out planning (mirrors of the SDK transport's pure helpers) |
//! | [`qr`] | the TOTP URI as an SVG QR code |
//! | `bindings` | the `#[wasm_bindgen]` surface the page's JavaScript calls |
//!
//! The page (`web/static/`) owns the WebSocket and IndexedDB; see `web/README.md`.

mod bindings;
pub mod engine;
pub mod error;
pub mod qr;
pub mod requests;
pub mod state;
pub mod wire;

pub use engine::Engine;
pub use error::EngineError;
