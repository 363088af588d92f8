//! The `#[wasm_bindgen]` surface: a thin wrapper over [`Engine`] that converts to and from
//! JavaScript values. Nothing here decides anything.
//!
//! `unsafe_code` is allowed in this module only: the glue `#[wasm_bindgen]` generates contains
//! `unsafe` blocks (ABI conversions). No `unsafe` is written by hand here or anywhere else in
//! the crate (every other module is under the crate's `deny`, and nothing in them uses it).
#![allow(unsafe_code)]

use medrelay_sdk::KdfParams;
use wasm_bindgen::prelude::*;

use crate::engine::Engine;
use crate::error::EngineError;

fn js_error(error: EngineError) -> JsError {
    JsError::new(&format!("{}|{}", error.code(), error))
}

fn now_ms() -> u64 {
    let now = js_sys::Date::now();
    if now.is_finite() && now > 0.0 {
        now as u64
    } else {
        0
    }
}

/// The engine, as the page sees it. Errors are `Error`s whose message is `CODE|text`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct WebEngine {
    inner: Engine,
}

#[wasm_bindgen]
impl WebEngine {
    /// Starts enrolling this browser with an invite code; the key store is sealed under
    /// `password` (Argon2id with OWASP's parameters).
    pub fn enroll(origin: &str, invite_code: &str, password: &str) -> Result<WebEngine, JsError> {
        Engine::enroll(origin, invite_code, password, KdfParams::OWASP, now_ms())
            .map(|inner| WebEngine { inner })
            .map_err(js_error)
    }

    /// Opens this browser's sealed key store with the staff member's password.
    pub fn unlock(sealed: &[u8], password: &str) -> Result<WebEngine, JsError> {
        Engine::unlock(sealed, password)
            .map(|inner| WebEngine { inner })
            .map_err(js_error)
    }

    /// Handles one binary frame from the server.
    pub fn receive(&mut self, frame: &[u8]) -> Result<(), JsError> {
        self.inner.receive(frame, now_ms()).map_err(js_error)
    }

    /// The sealed key store if it changed: persist it before sending the outgoing frames.
    #[wasm_bindgen(js_name = takeUnsaved)]
    pub fn take_unsaved(&mut self) -> Option<Vec<u8>> {
        self.inner.take_unsaved()
    }

    /// The frames to send, in order.
    #[wasm_bindgen(js_name = takeOutgoing)]
    pub fn take_outgoing(&mut self) -> js_sys::Array {
        self.inner
            .take_outgoing()
            .into_iter()
            .map(|f| JsValue::from(js_sys::Uint8Array::from(f.as_slice())))
            .collect()
    }

    /// What happened, as a JSON array.
    #[wasm_bindgen(js_name = takeEvents)]
    pub fn take_events(&mut self) -> String {
        serde_json::Value::Array(self.inner.take_events()).to_string()
    }

    /// The connection ended.
    #[wasm_bindgen(js_name = connectionClosed)]
    pub fn connection_closed(&mut self) {
        self.inner.connection_closed();
    }

    /// Who this device is (JSON), `null` before enrolment completes.
    pub fn whoami(&self) -> String {
        self.inner.whoami().to_string()
    }

    /// Sets up the password and TOTP (result: secret, URI, QR SVG, recovery codes).
    #[wasm_bindgen(js_name = setupCredentials)]
    pub fn setup_credentials(&mut self, password: &str) -> Result<u32, JsError> {
        self.inner.setup_credentials(password).map_err(js_error)
    }

    /// Logs in with the password and a TOTP or recovery code.
    pub fn login(&mut self, password: &str, code: &str) -> Result<u32, JsError> {
        self.inner.login(password, code).map_err(js_error)
    }

    /// Logs out.
    pub fn logout(&mut self) -> u32 {
        self.inner.logout()
    }

    /// Keeps the connection alive.
    pub fn ping(&mut self) {
        self.inner.ping();
    }

    /// Lists the conversations (result: the inbox).
    #[wasm_bindgen(js_name = listConversations)]
    pub fn list_conversations(&mut self) -> u32 {
        self.inner.list_conversations()
    }

    /// The inbox as JSON.
    pub fn inbox(&self) -> String {
        self.inner.inbox().to_string()
    }

    /// One conversation with its history, as JSON.
    pub fn conversation(&self, id: &str) -> Result<String, JsError> {
        self.inner
            .conversation(id)
            .map(|v| v.to_string())
            .map_err(js_error)
    }

    /// Marks a conversation read.
    #[wasm_bindgen(js_name = markRead)]
    pub fn mark_read(&mut self, id: &str) -> Result<(), JsError> {
        self.inner.mark_read(id).map_err(js_error)
    }

    /// Sends a text message.
    #[wasm_bindgen(js_name = sendText)]
    pub fn send_text(&mut self, conversation: &str, text: &str) -> Result<u32, JsError> {
        self.inner
            .send_text(conversation, text, now_ms())
            .map_err(js_error)
    }

    /// Safety numbers with a user's devices.
    #[wasm_bindgen(js_name = safetyNumbers)]
    pub fn safety_numbers(&mut self, user: &str) -> Result<u32, JsError> {
        self.inner.safety_numbers(user).map_err(js_error)
    }

    /// The org archive key announced on this connection (JSON: fingerprint, whether pinned,
    /// the pinned one's fingerprint), `null` when the org does not archive.
    #[wasm_bindgen(js_name = archiveKey)]
    pub fn archive_key(&self) -> String {
        self.inner.archive_key().to_string()
    }

    /// Accepts (pins) the announced archive key whose fingerprint the staff member compared.
    #[wasm_bindgen(js_name = acceptArchiveKey)]
    pub fn accept_archive_key(&mut self, fingerprint: &str) -> Result<(), JsError> {
        self.inner.accept_archive_key(fingerprint).map_err(js_error)
    }

    /// A console request by wire name with JSON arguments.
    pub fn console(&mut self, kind: &str, args_json: &str) -> Result<u32, JsError> {
        let args: serde_json::Value = serde_json::from_str(args_json)
            .map_err(|_| JsError::new("INVALID_INPUT|the arguments are not JSON"))?;
        self.inner.console(kind, &args).map_err(js_error)
    }
}
